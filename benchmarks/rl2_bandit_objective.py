"""Which of several bandit policies does PPO's own objective prefer? Discounted and undiscounted totals, paired.

The benchmark scores the undiscounted total of a trial; RL²'s PPO maximises the discounted return (``gamma``
0.99 in the bandit recipe). When PPO moves a policy to a lower score (e.g. fine-tuning the clone of Gittins
play, ``rl2_bandit_imitation.py --save`` then ``rl2_bandits.py --init``), this script says whether the policy it
moved to is *better* under the discounted objective (the objective and the score disagree) or worse (PPO went
downhill on its own objective: an optimisation failure, such as biased advantages).

Every policy plays one trial on each of the 1000 test bandits of ``rl2_bandits.py`` with the same reward draws
(reward seed 0, actions sampled, torch seed 0); Gittins (``metarl.bandits.Gittins``) plays them too. Policies:
``--weights FILE`` (a file ``rl2_bandit_imitation.py --save`` wrote) and ``--run DIR`` (a run kept by
``rl2_bandits.py --run-dir``), each repeatable, named by the file or folder. Differences are paired with the
first policy given, per bandit, with their 95% CI.

Run: ``python benchmarks/rl2_bandit_objective.py --k 10 --weights CLONE.pt --run RUN1 --run RUN2`` (a minute).
Results: ``benchmarks/results/rl2_bandit_objective.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_common import machine_line  # noqa: E402
from rl2_bandits import evaluation_trials, load_init_weights  # noqa: E402

from metarl.bandits import Gittins, play  # noqa: E402
from metarl.checkpoint import load_checkpoint  # noqa: E402
from metarl.cli import build_learner, load_run  # noqa: E402
from metarl.envs.bandit import BanditEnv  # noqa: E402
from metarl.logging import CONFIG_NAME  # noqa: E402
from metarl.provenance import write_results  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_bandit_objective.json"


def policy_rewards(learner: Any, tasks: list[Any], n_pulls: int) -> np.ndarray:
    """``[B, n]`` rewards of one sampled trial per test bandit (the evaluation's draws)."""
    return evaluation_trials(learner, tasks).rewards.numpy().T[:, :n_pulls].astype(np.float64)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="pulls per trial")
    parser.add_argument("--k", type=int, default=10, help="arms")
    parser.add_argument("--gamma", type=float, default=0.99, help="the discount of the objective (the recipe's)")
    parser.add_argument("--weights", type=Path, action="append", default=[], help="cloned weights (repeatable)")
    parser.add_argument("--run", type=Path, action="append", default=[], help="kept run folder (repeatable)")
    parser.add_argument("--n-test", type=int, default=1000, help="test bandits")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.weights and not args.run:
        parser.error("give at least one policy: --weights FILE or --run DIR")
    for path in args.weights:
        if not path.is_file():
            parser.error(f"--weights {path}: no such file (rl2_bandit_imitation.py --save writes one)")
    for path in args.run:
        if not (path / "checkpoint.pt").is_file():
            parser.error(f"--run {path}: no checkpoint.pt there (rl2_bandits.py --run-dir keeps a run)")
    if not 0.0 < args.gamma <= 1.0:
        parser.error(f"--gamma must be in (0, 1], got {args.gamma}")
    if args.n_test < 1:
        parser.error(f"--n-test must be at least 1 test bandit, got {args.n_test}")
    env_kwargs = {"n_arms": args.k, "n_pulls": args.n}
    saved = {path: load_checkpoint(path) for path in args.weights}
    trained = {path: json.loads((path / CONFIG_NAME).read_text()).get("env_kwargs") for path in args.run}
    for path, kwargs in [*((p, st.get("env_kwargs")) for p, st in saved.items()), *trained.items()]:
        if kwargs != env_kwargs:
            parser.error(f"{path} was made for {kwargs}, not {env_kwargs}; pass its --n and --k")
    names = [p.name for p in [*args.weights, *args.run]] + ["gittins"]
    if len(set(names)) < len(names):
        parser.error(f"two policies share a name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); "
                     "the results name each by its file or folder: rename or copy one")
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tasks = BanditEnv(n_arms=args.k).sample_tasks(args.n_test, np.random.default_rng(0), split="test")
    probs = np.array([t.probs for t in tasks])
    rewards: dict[str, np.ndarray] = {}
    for path, state in saved.items():
        learner, _ = build_learner("rl2", "metarl/Bandit-v0", env_kwargs, state.get("algo_config", {}), 0, "cpu")
        load_init_weights(learner, path)
        rewards[path.name] = policy_rewards(learner, tasks, args.n)
    for path in args.run:
        learner, _, _ = load_run(path)
        rewards[path.name] = policy_rewards(learner, tasks, args.n)
    rewards["gittins"] = play(Gittins(), probs, args.n, seed=0).rewards
    weights = args.gamma ** np.arange(args.n)
    totals = {name: r.sum(1) for name, r in rewards.items()}
    discounted = {name: r @ weights for name, r in rewards.items()}
    first = next(iter(rewards))
    policies = {name: {"total": mean_ci95(totals[name]).to_dict(),
                       "discounted": mean_ci95(discounted[name]).to_dict(),
                       f"total_minus_{first}": mean_ci95(totals[name] - totals[first]).to_dict(),
                       f"discounted_minus_{first}": mean_ci95(discounted[name] - discounted[first]).to_dict()}
                for name in rewards}
    payload = {"benchmark": "rl2_bandit_objective", "n_pulls": args.n, "n_arms": args.k, "gamma": args.gamma,
               "test": {"n_bandits": args.n_test, "split": "test", "task_seed": 0, "reward_seed": 0},
               "sources": {**{p.name: str(p) for p in args.weights}, **{p.name: str(p) for p in args.run}},
               "policies": policies,
               "command": " ".join(["python benchmarks/rl2_bandit_objective.py",
                                    *(sys.argv[1:] if argv is None else argv)])}
    write_results(args.out, payload, wall_time_s=time.perf_counter() - t0)
    d = json.loads(args.out.read_text())
    print(readme_table(d))
    return d


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_bandit_objective.json``."""
    first = next(iter(d["policies"]))

    def cell(ci: dict[str, Any], fmt: str = ".2f") -> str:
        return f"{ci['mean']:{fmt}} ± {ci['ci95']:.2f}"

    lines = [f"### Bandit policies under PPO's objective (n={d['n_pulls']}, k={d['n_arms']}; discount "
             f"{d['gamma']}; {d['test']['n_bandits']} test bandits, same draws)", "",
             f"`{d['command']}` ({machine_line(d)})", "",
             f"| policy | total reward (the score) | discounted return (PPO's objective) | total − {first} | "
             f"discounted − {first} |", "| --- | --- | --- | --- | --- |"]
    for name, p in d["policies"].items():
        lines.append(f"| {name} | {cell(p['total'], '.1f')} | {cell(p['discounted'])} | "
                     f"{cell(p[f'total_minus_{first}'], '+.1f')} | {cell(p[f'discounted_minus_{first}'], '+.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
