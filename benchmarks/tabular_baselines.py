"""Classical model-based strategies on the RL^2 tabular-MDP benchmark, beside RL^2's Table 2.

Setup (Duan et al., 2016, "RL^2", Sec. 4.2, Table 2; ``metarl/TabularMDP-v0``): ``|S| = 10``, ``|A| = 5``,
rewards ``N(mu, 1)`` with ``mu ~ N(1, 1)``, transitions ~ flat Dirichlet, episodes of ``T = 10`` steps from
state 0; a trial is ``n`` episodes of one MDP, score = total reward of the trial. For ``n`` in 10, 25, 50,
100:

- 1000 *test* MDPs (``TabularMDPEnv().sample_tasks(1000, default_rng(seed), split="test")``: the MDPs
  ``benchmarks/rl2_tabular.py`` tests RL^2 on), played through ``TabularMDPVectorEnv`` reset with env seed
  ``seed``, every strategy on the same MDPs.
- Strategies (:mod:`metarl.tabular`; all but UCRL2 know the family's prior, as a meta-learner learns it):
  random; greedy on the posterior-mean MDP; myopic (the action of largest posterior-mean reward in the current
  state, no planning over transitions: what a table of reward means alone earns); epsilon-greedy (``epsilon``
  tuned); PSRL (one posterior sample per episode); optimistic PSRL (max over ``k`` samples, ``k`` tuned); BEB
  (bonus ``beta / (1 + n(s, a))``, ``beta`` tuned); UCRL2 (optimistic planning in confidence sets around the
  empirical MDP, no prior; the radii's ``scale`` tuned). All re-plan once per episode (the episodic schedule);
  greedy and BEB are also run re-planning before every step (columns "per-step plan"), which uses what the
  current episode has shown.
- Tuning: 1000 *train* MDPs (seed ``seed + 1``, env seed ``seed + 1``), grids below, best mean total reward.
- Exact references on the test MDPs (dynamic programming, :func:`metarl.tabular.episode_values`): the
  uniformly random policy and the optimal policy of each MDP *given* its parameters (an upper bound).
- The paper's RL^2 and random numbers (``docs/BENCHMARKS.md``) beside them. The paper's table also lists
  PSRL, optimistic PSRL, UCRL2, BEB, epsilon-greedy and greedy, run with priors and settings it does not
  state; they are not copied here, so no column claims to reproduce them.

Run: ``python benchmarks/tabular_baselines.py`` (about 13 minutes on 2 CPU cores, most of it the
per-step re-planning, UCRL2 and the tuning at n = 100) or ``--quick`` (100 MDPs, n = 10 and 25, small grids;
seconds, temporary file unless ``--out``). Results: ``benchmarks/results/tabular_baselines.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_common import machine_line  # noqa: E402

from metarl.envs.tabular_mdp import TabularMDPEnv, TabularMDPVectorEnv  # noqa: E402
from metarl.provenance import write_results  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402
from metarl.tabular import (  # noqa: E402
    BEB,
    PSRL,
    UCRL2,
    EpsilonGreedy,
    Greedy,
    Myopic,
    OptimisticPSRL,
    RandomAction,
    TabularStrategy,
    episode_values,
    play_trials,
)

RESULTS = Path(__file__).resolve().parent / "results" / "tabular_baselines.json"
EPISODES: tuple[int, ...] = (10, 25, 50, 100)
QUICK_EPISODES: tuple[int, ...] = (10, 25)
EPSILON_GRID = (0.0, 0.003, 0.01, 0.02, 0.05, 0.1, 0.2)  # 0.0 is Greedy: the tuned value may be no exploration
BETA_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)
SAMPLES_GRID = (2, 5, 10)
SCALE_GRID = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
PAPER_RL2 = {10: 156.2, 25: 445.7, 50: 936.1, 100: 1913.7}
PAPER_RANDOM = {10: 100.1, 100: 999.4}

COLUMNS: tuple[tuple[str, str], ...] = (
    ("random", "random"), ("greedy", "greedy"), ("myopic", "myopic (no planning)"),
    ("epsilon_greedy", "ε-greedy (tuned ε)"), ("psrl", "PSRL"),
    ("optimistic_psrl", "optimistic PSRL (tuned k)"), ("beb", "BEB (tuned β)"), ("ucrl2", "UCRL2 (tuned scale)"),
    ("greedy_step", "greedy, per-step plan"), ("beb_step", "BEB, per-step plan (tuned β)"),
)


def sample_venv(n_mdps: int, seed: int, split: str) -> TabularMDPVectorEnv:
    """A batched env holding ``n_mdps`` MDPs of ``split`` drawn with ``default_rng(seed)``."""
    tasks = TabularMDPEnv().sample_tasks(n_mdps, np.random.default_rng(seed), split=split)
    return TabularMDPVectorEnv(n_mdps, tasks=tasks)


def tune(make: Callable[[Any], TabularStrategy], grid: tuple[Any, ...], venv: TabularMDPVectorEnv, n: int,
         seed: int) -> tuple[Any, dict[str, float]]:
    """The grid value with the best mean total reward on ``venv``'s (train) MDPs, and every grid score."""
    scores = {str(v): float(play_trials(make(v), venv, n, seed).total_reward.mean()) for v in grid}
    return max(grid, key=lambda v: scores[str(v)]), scores


def run_setting(n: int, n_mdps: int, seed: int, grids: dict[str, tuple[Any, ...]]) -> dict[str, Any]:
    train, test = sample_venv(n_mdps, seed + 1, "train"), sample_venv(n_mdps, seed, "test")
    eps, eps_scores = tune(lambda e: EpsilonGreedy(epsilon=e), grids["epsilon"], train, n, seed + 1)
    beta, beta_scores = tune(lambda b: BEB(beta=b), grids["beta"], train, n, seed + 1)
    beta_step, beta_step_scores = tune(lambda b: BEB(beta=b, replan="step"), grids["beta"], train, n, seed + 1)
    k, k_scores = tune(lambda s: OptimisticPSRL(samples=s), grids["samples"], train, n, seed + 1)
    scale, scale_scores = tune(lambda c: UCRL2(scale=c), grids["scale"], train, n, seed + 1)
    strategies: dict[str, tuple[TabularStrategy, dict[str, Any]]] = {
        "random": (RandomAction(), {}),
        "greedy": (Greedy(), {"replan": "episode"}),
        "myopic": (Myopic(), {"replan": "episode"}),
        "epsilon_greedy": (EpsilonGreedy(epsilon=eps), {"epsilon": eps, "tuned_on_train": eps_scores}),
        "psrl": (PSRL(), {"replan": "episode"}),
        "optimistic_psrl": (OptimisticPSRL(samples=k), {"samples": k, "tuned_on_train": k_scores}),
        "beb": (BEB(beta=beta), {"beta": beta, "tuned_on_train": beta_scores}),
        "ucrl2": (UCRL2(scale=scale), {"scale": scale, "delta": UCRL2.delta, "tuned_on_train": scale_scores}),
        "greedy_step": (Greedy(replan="step"), {"replan": "step"}),
        "beb_step": (BEB(beta=beta_step, replan="step"), {"beta": beta_step, "replan": "step",
                                                          "tuned_on_train": beta_step_scores}),
    }
    results: dict[str, Any] = {}
    for name, (strategy, params) in strategies.items():
        t0 = time.perf_counter()
        trial = play_trials(strategy, test, n, seed)
        results[name] = {**mean_ci95(trial.total_reward).to_dict(), "strategy": repr(strategy), "params": params,
                         "first_episode": mean_ci95(trial.episode_returns[:, 0]).to_dict(),
                         "last_episode": mean_ci95(trial.episode_returns[:, -1]).to_dict(),
                         "wall_time_s": time.perf_counter() - t0}
    refs = np.array([episode_values(*t.arrays(), test.horizon) for t in test.get_tasks()])  # [N, 2]
    return {"n_episodes": n, "n_test_mdps": n_mdps, "results": results,
            "optimal_exact": float(n * refs[:, 0].mean()), "random_exact": float(n * refs[:, 1].mean()),
            "paper_rl2": PAPER_RL2.get(n), "paper_random": PAPER_RANDOM.get(n)}


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``tabular_baselines.json``: one row per trial length ``n``."""
    lines = ["### Classical strategies on tabular MDPs (total reward of an n-episode trial, "
             f"{d['setup']['n_test_mdps']} held-out MDPs, mean ± 95% CI)", "",
             f"`python benchmarks/tabular_baselines.py` ({machine_line(d)}); all but UCRL2 know the family's "
             "prior; \"per-step plan\" re-plans before every step instead of once per episode", "",
             "| n | " + " | ".join(title for _, title in COLUMNS) + " | optimal, MDP known (exact) | RL² (paper) |",
             "|" + " --- |" * (len(COLUMNS) + 3)]
    for s in d["settings"]:
        cells = [f"{s['results'][name]['mean']:.1f} ± {s['results'][name]['ci95']:.1f}" for name, _ in COLUMNS]
        paper = "" if s["paper_rl2"] is None else f"{s['paper_rl2']:.1f}"
        lines.append(f"| {s['n_episodes']} | " + " | ".join(cells) + f" | {s['optimal_exact']:.1f} | {paper} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 MDPs, n = 10 and 25, small grids")
    parser.add_argument("--out", type=Path, default=None, help=f"JSON results path (default {RESULTS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test MDPs and of their env draws")
    args = parser.parse_args(argv)
    n_mdps = 100 if args.quick else 1000
    grids: dict[str, tuple[Any, ...]] = {"epsilon": EPSILON_GRID, "beta": BETA_GRID, "samples": SAMPLES_GRID,
                                         "scale": SCALE_GRID}
    if args.quick:
        grids = {name: grid[:2] for name, grid in grids.items()}
    out = args.out or (Path(tempfile.mkdtemp()) / "tabular_baselines.json" if args.quick else RESULTS)
    t0 = time.perf_counter()
    settings = [run_setting(n, n_mdps, args.seed, grids) for n in (QUICK_EPISODES if args.quick else EPISODES)]
    payload = {
        "benchmark": "tabular_baselines",
        "setup": {"source": "RL^2 (Duan et al., 2016) Table 2", "env": "metarl/TabularMDP-v0",
                  "prior": "mu ~ N(1, 1), r ~ N(mu, 1), P(s, a, .) ~ Dirichlet(1, ..., 1); known to the strategies",
                  "n_test_mdps": n_mdps, "split": "test", "seed": args.seed,
                  "tuning": {"split": "train", "n_mdps": n_mdps, "seed": args.seed + 1, **grids},
                  "metric": "total reward of one trial of n episodes of 10 steps, mean ± 95% CI over MDPs",
                  "quick": args.quick},
        "settings": settings,
    }
    path = write_results(out, payload, wall_time_s=time.perf_counter() - t0)
    print(readme_table(json.loads(path.read_text())))
    print(f"\nwrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
