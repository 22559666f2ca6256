"""MAML-RL on CartPoleDynamics: how much of the robust-to-oracle gap does adaptation close?

There is no published benchmark for this family (docs/BENCHMARKS.md: "we define it"). Its tasks vary the
physics *and the sign of the action* (``envs/cartpole_dynamics.py``), so a memoryless policy that does not
adapt can master only one sign: ``benchmarks/cartpole_gap.py`` measured it with SB3 PPO (robust policy
104 ± 13 out of 200 on the test tasks, oracle 200 ± 0). The question here is whether a few
policy-gradient steps from a MAML initialisation recover the oracle's return.

Protocol (:func:`adaptation_common.compare_maml_with_baselines`, the same as ``maml_rl_navigation.py``):

- ``maml``: :class:`metarl.agents.maml_rl.MamlRLAgent`, categorical MLP policy 2x64 tanh, meta-batch 20
  tasks, 10 episodes per inner step, one vanilla policy-gradient inner step (inner step size 0.5, the
  released MAML code's value) with a linear baseline refit per task, second-order meta-gradient, TRPO outer
  loop (max KL 0.01), ``--iterations`` meta-iterations, seed 0.
- ``pretrained``: the *robust* policy: one :class:`PretrainedAgent` policy (same network) trained with PPO
  across the training tasks on as many episodes as MAML sampled, then fine-tuned by policy gradient.
- ``random initialisation`` (an untrained policy, fine-tuned), ``random policy``, and the ``oracle``: a
  ``PretrainedAgent`` trained on ``oracle=True`` (task parameters and action sign observed), evaluated
  without adaptation.
- Evaluation: 40 held-out test tasks, 0-3 policy-gradient steps with 20 episodes per step (sampled actions,
  not argmax), every learner on the same tasks and env seeds; step sizes of every learner selected on 40
  validation tasks of the *train* split (never the test tasks).

Reported: mean return ± 95% CI over the tasks per step, and the fraction of the gap closed,
``(R_k - R_robust,0) / (R_oracle - R_robust,0)`` for MAML and for the fine-tuned robust policy.

Run: ``python benchmarks/maml_rl_cartpole.py`` (about 25 minutes on 2 idle CPU cores) or ``--quick``
(seconds, smoke test; writes to a temporary file unless ``--out`` is given).
Results: ``benchmarks/results/maml_rl_cartpole.json`` (+ ``.png``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from adaptation_common import compare_maml_with_baselines

from metarl.agents.maml_rl import MamlRLConfig
from metarl.agents.pretrained import PretrainedConfig
from metarl.config import config_to_dict
from metarl.evaluation import Curve, format_table, plot_curves
from metarl.provenance import write_results
from metarl.training import TrainConfig

ENV = "metarl/CartPoleDynamics-v0"
RESULTS = Path(__file__).resolve().parent / "results" / "maml_rl_cartpole.json"
ORACLE = "oracle (task observed)"
LATER_STEP_FRACTIONS = (1.0, 0.5, 0.25)
"""MAML's evaluation steps 2, 3: step size ``inner_lr * fraction``."""
FINETUNE_GRID = (0.1, 0.3, 1.0)
"""The baselines' first fine-tuning step size."""
BASELINE_LATER_FRACTIONS = (1.0, 0.5, 0.25)
"""The baselines' later steps: first step size times this."""


def gap_closed(curves: dict[str, Curve], name: str) -> list[float]:
    """Per step: ``(R_k - R_robust,0) / (R_oracle - R_robust,0)`` of learner ``name``."""
    robust0 = float(curves["pretrained"].per_task[:, 0].mean())
    oracle = float(curves[ORACLE].per_task[:, 0].mean())
    return [(float(m) - robust0) / (oracle - robust0) for m in curves[name].per_task.mean(axis=0)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (PNG beside it)")
    parser.add_argument("--iterations", type=int, default=None, help="MAML meta-iterations (default 40)")
    parser.add_argument("--inner-lr", type=float, default=0.5, help="MAML inner step size")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every learner")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the training runs (checkpoints, progress.csv) here instead of a temporary folder")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # small networks on a shared 2-core machine: see TrainConfig.threads
    wall = time.perf_counter()
    quick = args.quick
    iterations = args.iterations if args.iterations is not None else (2 if quick else 40)
    out = args.out or (Path(tempfile.mkdtemp()) / "maml_rl_cartpole.json" if quick else RESULTS)
    n_tasks, episodes, budget = (4, 3, 2) if quick else (40, 20, 3)
    net: dict[str, Any] = dict(hidden=(16, 16) if quick else (64, 64), activation="tanh")
    maml_cfg = MamlRLConfig(**net, meta_batch_size=3 if quick else 20, fast_batch_size=3 if quick else 10,
                            inner_lr=args.inner_lr)
    pre_cfg = PretrainedConfig(**net, meta_batch_size=3 if quick else 20, episodes_per_task=3 if quick else 20)
    eval_seed, task_seed = 12345, 2024
    grids = (LATER_STEP_FRACTIONS, FINETUNE_GRID, BASELINE_LATER_FRACTIONS)
    grids = tuple(g[:1] for g in grids) if quick else grids  # a smoke test needs one candidate each
    result = compare_maml_with_baselines(ENV, maml_cfg, pre_cfg, iterations, args.seed, n_tasks, episodes, budget,
                                         task_seed, eval_seed, *grids, ORACLE, run_dir=args.run_dir)
    curves = result.curves
    closed = {name: gap_closed(curves, name) for name in ("maml", "pretrained")}
    table = format_table(curves)
    wall_time = time.perf_counter() - wall
    payload = {
        "benchmark": "maml_rl_cartpole",
        "setup": {
            "env": ENV, "horizon": result.horizon, "quick": quick, "seed": args.seed, "test_tasks": n_tasks,
            "task_seed": task_seed, "split": "test", "budget": budget, "episodes_per_step": episodes,
            "eval_seed": eval_seed, "actions": "sampled from the policy (not argmax)",
            "step_size_selection": {"split": f"train ({n_tasks} fresh validation tasks, never the test tasks)",
                                    "task_seed": task_seed + 1, "criterion": "mean return over steps 1..budget",
                                    "maml_later_step_fractions": grids[0], "baseline_first_step_grid": grids[1],
                                    "baseline_later_step_fractions": grids[2], "selected": result.selection},
            "oracle": "PretrainedAgent on oracle=True (task parameters and action sign observed), 0 steps",
            "pretrained_budget": "same number of sampled episodes as MAML",
        },
        "config": {"maml": config_to_dict(maml_cfg), "pretrained": config_to_dict(pre_cfg),
                   "train_loop": config_to_dict(dataclasses.replace(TrainConfig(), iterations=iterations,
                                                                    seed=args.seed, eval_every=0))},
        "curves": {name: c.to_dict() for name, c in curves.items()},
        "gap_closed": {"definition": "(R_k - R_robust,0) / (R_oracle - R_robust,0), robust = pretrained", **closed},
        "table": table,
        "training": result.training,
        "selection_wall_time_s": result.selection_time_s,
        "evaluation_wall_time_s": result.evaluation_time_s,
    }
    write_results(out, payload, wall_time_s=wall_time)
    plot_curves(curves, out.with_suffix(".png"), f"MAML-RL on {ENV} ({n_tasks} test tasks, {episodes} ep/step)")
    print(table)
    print("gap closed (robust -> oracle): " + "; ".join(
        f"{name}: " + ", ".join(f"{g:.0%}" for g in gaps) for name, gaps in closed.items()))
    print(f"MAML training {result.training['maml']['wall_time_s']:.0f} s for {iterations} iterations; "
          f"total wall time {wall_time:.0f} s; wrote {out} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()


def readme_table(d: dict[str, Any]) -> str:
    """The README's table for this results file (``benchmarks/report.py``)."""
    from adaptation_common import curve_table, machine_line

    s, t, g = d["setup"], d["training"]["maml"], d["gap_closed"]
    lines = [f"### MAML-RL on CartPoleDynamics ({s['test_tasks']} held-out tasks, {s['episodes_per_step']} episodes "
             f"per step, H={s['horizon']}; mean return ± 95% CI over tasks)", "",
             f"`python benchmarks/maml_rl_cartpole.py` ({machine_line(d)}; MAML meta-training "
             f"{t['wall_time_s'] / 60:.1f} min for {t['iterations']} iterations)", "",
             *curve_table(d), "",
             "Fraction of the robust-to-oracle gap closed per step, (R_k − R_robust,0) / (R_oracle − R_robust,0): "
             "MAML " + ", ".join(f"{x:.0%}" for x in g["maml"]) + "; the robust (pretrained) policy fine-tuned "
             + ", ".join(f"{x:.0%}" for x in g["pretrained"]) + "."]
    return "\n".join(lines)
