"""RL² (and MANN) on random tabular MDPs (RL², Duan et al. 2016, Table 2).

Setup (``docs/BENCHMARKS.md``): ``|S| = 10``, ``|A| = 5``, rewards ``N(mu, 1)`` with ``mu ~ N(1, 1)``,
transitions ~ flat Dirichlet, episodes of ``T = 10`` steps from state 0 (``metarl/TabularMDP-v0``); a
trial is ``n`` episodes of one MDP. The agent is meta-trained on *train* MDPs through
``metarl.training.train`` (trials of ``n`` episodes), then runs one trial on each of 1000 *test* MDPs
(``sample_tasks(1000, default_rng(0), split="test")``, env seed 0). Reported: the total reward of the
trial (mean ± 95% CI over MDPs), the return of every episode of the trial (episode 1 vs later ones:
what the memory adds), and two exact references computed by dynamic programming on the same MDPs: the
uniformly random policy and the optimal policy of each MDP *given* its parameters (an upper bound no
learner reaches without knowing the MDP; :func:`metarl.tabular.episode_values`). The classical strategies
(greedy, PSRL, BEB, ...) on the same MDPs are ``benchmarks/tabular_baselines.py``.
Paper: RL² 156.2 at n = 10 (random 100.1).

Run::

    python benchmarks/rl2_tabular.py --n 10 --iterations 400
    python benchmarks/rl2_tabular.py --quick
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_common import machine_line  # noqa: E402
from rl2_bandits import (  # noqa: E402
    add_init_option,
    agent_label,
    check_run_args,
    compact_curve,
    entry_name,
    memory_agent_parser,
    merge_entry,
    plot_training,
    resume_fields,
    tiny,
    train_memory_learner,
)

from metarl.cli import _algorithms, _parse_env_kwargs  # noqa: E402
from metarl.config import config_from_dict, config_to_dict  # noqa: E402
from metarl.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402
from metarl.tabular import PSRL, Greedy, episode_values, play_trials  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_tabular.json"
PAPER = {10: 156.2, 25: 445.7, 50: 936.1, 100: 1913.7}
PAPER_RANDOM = {10: 100.1, 100: 999.4}


def _cell(ci: dict[str, Any] | None, signed: bool = False) -> str:
    if not ci:
        return "not run"
    return f"{ci['mean']:{'+' if signed else ''}.1f} ± {ci['ci95']:.1f}"


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_tabular.json``: one row per (agent, n)."""
    heading = ["### RL² on tabular MDPs (RL² Table 2; total reward of an n-episode trial, 1000 "
               "held-out MDPs; reduced runs)", "",
               f"`python benchmarks/rl2_tabular.py` ({machine_line(d)})", ""]
    lines = ["| n episodes | agent | trial total | greedy actions | episode 1 | last episode | posterior-mean greedy "
             "(same MDPs) | agent − greedy (paired) | PSRL | random (exact) | optimal, MDP known (exact) | paper RL² | "
             "iterations, env steps | train time |",
             "|" + " --- |" * 14]
    for e in sorted(d["entries"].values(), key=lambda e: (e["n_episodes"], agent_label(e))):
        r, eps = e["result"], e["per_episode"]
        classical = e.get("classical", {})  # entries made before the greedy actions and classical columns: none
        lines.append(
            f"| {e['n_episodes']} | {agent_label(e)} | {r['mean']:.1f} ± {r['ci95']:.1f} | "
            f"{_cell(e.get('result_greedy'))} | "
            f"{eps[0]['mean']:.2f} ± {eps[0]['ci95']:.2f} | {eps[-1]['mean']:.2f} ± {eps[-1]['ci95']:.2f} | "
            f"{_cell(classical.get('greedy'))} | {_cell(e.get('minus_greedy'), signed=True)} | "
            f"{_cell(classical.get('psrl'))} | "
            f"{e['random_exact']:.1f} | {e['optimal_exact']:.1f} | {e['paper'] or ''} | "
            f"{e['iterations']}, {e['train_env_steps'] / 1e6:.1f}M | {e['train_wall_time_s'] / 60:.0f} min |")
    return "\n".join([*heading, *lines])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = memory_agent_parser(__doc__.split("\n\n")[0], 300, "2 iterations, 20 test MDPs, temporary output")
    parser.add_argument("--n", type=int, default=10, help="episodes per trial")
    add_init_option(parser, "rl2_tabular_imitation.py")
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    torch.set_num_threads(1)
    overrides = _parse_env_kwargs(args.set)
    iterations, n_test, out = args.iterations, 1000, args.out or RESULTS
    if args.quick:
        iterations, n_test = 2, 20
        overrides = {**tiny(args.agent, 4), **overrides}
        out = args.out or Path(tempfile.mkdtemp()) / "rl2_tabular.json"
    t0 = time.perf_counter()
    config = config_from_dict(_algorithms()[args.agent][0], {"episodes_per_trial": args.n, **overrides})
    run = train_memory_learner(
        args.agent, "metarl/TabularMDP-v0", {}, config_to_dict(config), iterations, args.seed,
        eval_every=max(iterations // 10, 1), eval_tasks=100, eval_budget=args.n - 1, run_dir=args.run_dir,
        resume=args.resume, init=args.init)
    learner, envs, curve, wall = run.learner, run.envs, run.curve, run.wall
    tasks = TabularMDPEnv().sample_tasks(n_test, np.random.default_rng(0), split="test")
    torch.manual_seed(0)
    per_episode = learner.adapt_many(tasks, args.n - 1, seed=0, episodes_per_step=1).stage_returns  # [N, n]
    greedy = learner.adapt_many(tasks, args.n - 1, seed=0, episodes_per_step=1, greedy=True).stage_returns
    refs = np.array([episode_values(*t.arrays(), envs.horizon) for t in tasks])  # [N, 2]
    venv = TabularMDPVectorEnv(n_test, tasks=tasks)  # the parameter-free classical strategies, same MDPs
    classical = {name: play_trials(strategy, venv, args.n, seed=0).total_reward
                 for name, strategy in (("greedy", Greedy()), ("psrl", PSRL()))}
    env_steps = sum(row.get("rollout/env_steps", 0.0) for row in curve)
    entry = {
        "agent": args.agent, "n_episodes": args.n, "config": config_to_dict(config), "iterations": iterations,
        "train_env_steps": env_steps, "train_wall_time_s": wall, "quick": args.quick, **resume_fields(run),
        **({"init": str(args.init)} if args.init is not None else {}),
        "reduced": True, "reduced_note": f"{iterations} iterations x {config.meta_batch_size} trials on 2 shared "
                                         "CPU cores; the paper trained with TRPO on far larger batches",
        "test": {"n_mdps": n_test, "split": "test", "task_seed": 0, "env_seed": 0},
        "result": mean_ci95(per_episode.sum(1)).to_dict(),
        "result_greedy": mean_ci95(greedy.sum(1)).to_dict(),
        "classical": {name: mean_ci95(total).to_dict() for name, total in classical.items()},
        "minus_greedy": mean_ci95(per_episode.sum(1) - classical["greedy"]).to_dict(),
        "per_episode": [mean_ci95(per_episode[:, k]).to_dict() for k in range(args.n)],
        "optimal_exact": float(args.n * refs[:, 0].mean()), "random_exact": float(args.n * refs[:, 1].mean()),
        "paper": PAPER.get(args.n), "paper_random": PAPER_RANDOM.get(args.n),
        "curve": compact_curve(curve, ("rollout/return_mean", "rollout/first_episode_return",
                                       "rollout/last_episode_return", "time/iteration_s")),
    }
    setup = {"source": "RL² (Duan et al. 2016) Table 2", "env": "metarl/TabularMDP-v0",
             "metric": "total reward of a trial of n episodes of 10 steps, mean ± 95% CI over test MDPs"}
    key = args.entry or f"{entry_name(args.agent, entry['config'])}_n{args.n}"
    final = merge_entry(out, key, entry, setup, time.perf_counter() - t0)
    plot_training(final["entries"], out.with_suffix(".png"), "", "rollout/return_mean", "n={n_episodes} episodes")
    print(readme_table(final))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return final


if __name__ == "__main__":
    main()
