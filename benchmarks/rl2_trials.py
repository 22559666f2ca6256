"""RL² on Navigation2D and CartPoleDynamics: return per episode within a trial, next to MAML-RL's curve.

A memory learner adapts *inside* a trial: its first episode on a new task explores, later episodes
exploit what the memory holds. For each family the agent (``agents/rl2.py`` or ``agents/mann.py``) is
meta-trained on trials of ``n`` episodes of *train* tasks through ``metarl.training.train``, then runs
``trials`` trials of ``n`` episodes on each *test* task (Navigation2D: the 40 test goals of
``benchmarks/maml_rl_navigation.py``, same task seed; CartPoleDynamics: 100 test tasks). Reported per
episode ``k`` of the trial: mean return ± 95% CI over tasks, for the agent and a uniform random policy,
and, for Navigation2D, the MAML-RL adaptation curve from ``benchmarks/results/maml_rl_navigation.json``
(read as committed). The two curves measure different things: MAML-RL's point ``k`` is after ``k``
policy-gradient steps, each fed 40 episodes of the task; RL²'s point ``k`` is episode ``k + 1`` of a
trial, after ``k`` episodes of experience in total.

Run::

    python benchmarks/rl2_trials.py --env navigation --iterations 150
    python benchmarks/rl2_trials.py --env cartpole --iterations 150
    python benchmarks/rl2_trials.py --quick
"""

from __future__ import annotations

import json
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
    agent_label,
    check_run_args,
    compact_curve,
    entry_name,
    memory_agent_parser,
    merge_entry,
    resume_fields,
    tiny,
    train_memory_learner,
)

from metarl.cli import _algorithms, _parse_env_kwargs, build_learner  # noqa: E402
from metarl.config import config_from_dict, config_to_dict  # noqa: E402
from metarl.evaluation import Curve, plot_curves  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "rl2_trials.json"
MAML_RESULTS = HERE / "results" / "maml_rl_navigation.json"
ENVS = {"navigation": ("metarl/Navigation2D-v0", 40), "cartpole": ("metarl/CartPoleDynamics-v0", 100)}


def maml_reference() -> dict[str, Any] | None:
    """MAML-RL's committed Navigation2D curve (mean per gradient step) and its protocol, if present."""
    if not MAML_RESULTS.exists():
        return None
    d = json.loads(MAML_RESULTS.read_text())
    return {"curves": {k: {"mean": v["mean"], "ci95": v["ci95"]} for k, v in d["curves"].items()
                       if k in ("maml", "pretrained")},
            "setup": d["setup"], "commit": d["provenance"]["commit"]}


def run_env(agent: str, name: str, iterations: int, n_episodes: int, trials: int, seed: int, quick: bool,
            overrides: dict[str, Any], out_dir: Path, run_dir: Path | None = None,
            resume: bool = False) -> dict[str, Any]:
    env, n_test = ENVS[name]
    maml = maml_reference() if name == "navigation" else None
    task_seed = int(maml["setup"].get("task_seed", 0)) if maml else 0
    if quick:
        n_test = 3
    config = config_from_dict(_algorithms()[agent][0], {"episodes_per_trial": n_episodes, **overrides})
    run = train_memory_learner(agent, env, {}, config_to_dict(config), iterations, seed,
                               eval_every=max(iterations // 10, 1), eval_tasks=10, eval_budget=n_episodes - 1,
                               run_dir=run_dir, resume=resume)
    learner, envs, curve, wall = run.learner, run.envs, run.curve, run.wall
    tasks = envs.sample_tasks(n_test, np.random.default_rng(task_seed), split="test")
    t0 = time.perf_counter()
    torch.manual_seed(0)
    ours = learner.adapt_many(tasks, n_episodes - 1, seed=0, episodes_per_step=trials).stage_returns
    random_agent, _ = build_learner("random", env, {}, {}, 0, "cpu")
    rand = random_agent.adapt_many(tasks, n_episodes - 1, seed=0, episodes_per_step=trials).stage_returns
    label = agent_label({"agent": agent, "config": config_to_dict(config)})
    curves = {label: Curve(label, ours, "episodes"), "random policy": Curve("random policy", rand)}
    entry: dict[str, Any] = {
        "agent": agent, "env": env, "n_episodes": n_episodes, "config": config_to_dict(config),
        "iterations": iterations, "train_env_steps": sum(r.get("rollout/env_steps", 0.0) for r in curve),
        "train_wall_time_s": wall, "eval_wall_time_s": time.perf_counter() - t0, "quick": quick, **resume_fields(run),
        "reduced": True,
        "reduced_note": f"{iterations} iterations x {config.meta_batch_size} trials on 2 shared CPU cores",
        "test": {"n_tasks": n_test, "split": "test", "task_seed": task_seed, "trials_per_task": trials, "env_seed": 0},
        "curves": {k: c.to_dict() for k, c in curves.items()},
        "later_minus_episode1": None,
        "curve": compact_curve(curve, ("rollout/first_episode_return", "rollout/last_episode_return",
                                       "time/iteration_s")),
        "maml_rl": maml,
    }
    if n_episodes > 1:
        gain = ours[:, 1:].mean(1) - ours[:, 0]
        entry["later_minus_episode1"] = mean_ci95(gain).to_dict()
    refs = {f"MAML-RL ({k}, per gradient step)": v["mean"] for k, v in (maml or {"curves": {}})["curves"].items()}
    # beside the results file; the GRU RL² keeps its plain name (rl2_trials_navigation.png), others are named
    own = entry_name(agent, config_to_dict(config))
    png = out_dir / (f"rl2_trials_{name}.png" if own == "rl2" else f"rl2_trials_{own}_{name}.png")
    plot_curves(curves, png, f"{label} on {env.split('/')[-1]}: return per episode ({n_test} test tasks)",
                stage_label="episode of the trial (0 = first) / MAML-RL: gradient steps", references=refs)
    entry["png"] = png.name
    return entry


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_trials.json``: per env, return per episode of the trial."""
    heading = ["### RL² on Navigation2D and CartPoleDynamics trials (return per episode of a "
               "2-episode trial; reduced runs)", "",
               f"`python benchmarks/rl2_trials.py` ({machine_line(d)})", ""]
    lines = []
    for e in d["entries"].values():
        n = e["n_episodes"]
        lines += [f"**{e['env']}** ({e['test']['n_tasks']} test tasks x {e['test']['trials_per_task']} trials; "
                  f"{e['iterations']} iterations, {e['train_wall_time_s'] / 60:.0f} min of training)", "",
                  "| | " + " | ".join(f"episode {k + 1}" for k in range(n)) + " |", "|" + " --- |" * (n + 1)]
        for name, c in e["curves"].items():
            lines.append(f"| {name} | " + " | ".join(f"{m:.1f} ± {ci:.1f}" for m, ci in zip(c["mean"], c["ci95"],
                                                                                          strict=True)) + " |")
        for name, c in ((e.get("maml_rl") or {}).get("curves") or {}).items():
            lines.append(f"| MAML-RL {name}: after 0, 1, ... gradient steps (40 episodes each) | "
                         + " | ".join(f"{m:.1f}" for m in c["mean"][:n]) + " |")
        lines.append("")
    return "\n".join([*heading, *lines]).rstrip()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = memory_agent_parser(__doc__.split("\n\n")[0], 150, "2 iterations, 3 test tasks, temporary output")
    parser.add_argument("--env", choices=tuple(ENVS), default="navigation")
    parser.add_argument("--n", type=int, default=2, help="episodes per trial (training and evaluation)")
    parser.add_argument("--trials", type=int, default=10, help="evaluation trials per test task")
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    torch.set_num_threads(1)
    overrides = _parse_env_kwargs(args.set)
    iterations, trials, out = args.iterations, args.trials, args.out or RESULTS
    if args.quick:
        iterations, trials = 2, 2
        overrides = {**tiny(args.agent, 3), **overrides}
        out = args.out or Path(tempfile.mkdtemp()) / "rl2_trials.json"
    t0 = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)  # the plot is written beside the results file, first
    entry = run_env(args.agent, args.env, iterations, args.n, trials, args.seed, args.quick, overrides, out.parent,
                    args.run_dir, args.resume)
    setup = {"metric": "return per episode within a trial, mean ± 95% CI over test tasks",
             "reference": "MAML-RL curve from benchmarks/results/maml_rl_navigation.json (as committed)"}
    final = merge_entry(out, args.entry or f"{entry_name(args.agent, entry['config'])}_{args.env}", entry, setup,
                        time.perf_counter() - t0)
    print(readme_table(final))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return final


if __name__ == "__main__":
    main()
