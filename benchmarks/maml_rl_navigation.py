"""MAML-RL on Navigation2D, next to the MAML paper's curve and its baselines (Finn et al. 2017, fig. 5).

Setup (``metarl/Navigation2D-v0``, horizon 100; docs/BENCHMARKS.md, Navigation2D):

- ``maml``: :class:`metarl.agents.maml_rl.MamlRLAgent`, the paper's setup: Gaussian MLP policy 2x100 ReLU,
  meta-batch 20 tasks, 20 episodes per inner step, one vanilla policy-gradient inner step with a linear
  baseline refit per task, second-order meta-gradient, TRPO outer loop (max KL 0.01, 10 CG iterations,
  backtracking line search). Trained for ``--iterations`` meta-iterations through
  :func:`metarl.training.train` (the loop ``metarl train`` runs), seed 0.
- ``pretrained``: :class:`metarl.agents.pretrained.PretrainedAgent` (one policy trained with PPO across the
  training tasks, no task information), trained on as many episodes as MAML sampled (MAML samples
  ``num_inner_steps + 1`` batches of 20x20 episodes per iteration, PPO one), then fine-tuned exactly like
  MAML's evaluation.
- ``random initialisation``: an untrained ``PretrainedAgent`` fine-tuned the same way.
- ``random policy``: :class:`metarl.agents.random_policy.RandomAgent`, uniform actions.
- ``oracle``: a ``PretrainedAgent`` trained with ``oracle=True`` (the goal is in the observation), as many
  iterations as ``pretrained``, evaluated without adaptation (0 steps). PPO learns a near-deterministic
  policy that reaches the goal box in a few steps (about -0.5, close to the best possible return); the
  paper's oracle (-2.3) kept more action noise, which costs small rewards around the goal box.

Evaluation (paper protocol): 40 held-out goals (``split="test"``), 0-4 policy-gradient steps with 40
episodes per step, every learner on the same goals and env seeds (:func:`metarl.evaluation.evaluate_adaptation`).

Step sizes of the evaluation steps. MAML's first step uses ``inner_lr``, the step it was meta-trained for.
Later steps are not meta-trained, and the curve depends strongly on their size: with normalised
advantages a policy-gradient step does not shrink as the policy converges, so a step that helps at step 1
adds noise at step 3 (one trained model, test goals: later steps of 0.1 gave -16 at 3 steps, 0.05 gave
-5, 0.025 gave -1.7). The released test script halves the step after the first one; the paper does not
say how it chose. Here every learner's step sizes are *selected on validation goals* (40 fresh goals of
the *train* split, never the test goals) from a small grid, by the mean return over steps 1-4: MAML's
later step as a fraction of ``inner_lr`` (:data:`LATER_STEP_FRACTIONS`; the first step stays ``inner_lr``,
the step it was meta-trained for); the baselines' first step (:data:`FINETUNE_GRID`) *and* their later
steps (:data:`BASELINE_LATER_FRACTIONS`, 1.0 = their own constant step; the pretrained policy diverges
at 3-4 steps of its default constant 0.3), a larger grid than MAML's.
The test curve of MAML with the released script's halving is reported as well (``maml (later steps
inner_lr/2)``). Reported: mean return ± 95% CI over the 40 goals per step, the paper's numbers beside
them, and the target (after 1 step >= -11, after 3 steps >= -3.5).

Run: ``python benchmarks/maml_rl_navigation.py`` (about 18 minutes on 2 CPU cores, nearly all of it the
second-order TRPO meta-training) or ``--quick`` (seconds, smoke test; writes to a temporary file unless
``--out`` is given). Results: ``benchmarks/results/maml_rl_navigation.json`` (+ ``.png``).
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
from metarl.evaluation import format_table, plot_curves
from metarl.provenance import write_results
from metarl.training import TrainConfig

ENV = "metarl/Navigation2D-v0"
RESULTS = Path(__file__).resolve().parent / "results" / "maml_rl_navigation.json"
PAPER = {
    # Finn et al. 2017, Navigation2D (docs/BENCHMARKS.md): mean over 40 test goals after 0..4 steps.
    "maml": [-40.4, -11.7, -3.3, -3.2, -3.4],
    "pretrained": [-40.8, -19.7, -11.7, -8.5, -7.5],
    "random initialisation": [-82.7, -58.0, -53.8, -46.8, -42.9],
    "oracle": [-2.3],
}
TARGET = {"after_1_step": -11.0, "after_3_steps": -3.5}
LATER_STEP_FRACTIONS = (0.5, 0.25, 0.1)
"""MAML's evaluation steps 2, 3, ...: step size ``inner_lr * fraction`` (0.5: the released test script)."""
FINETUNE_GRID = (0.03, 0.1, 0.3)
"""The baselines' first fine-tuning step size (PretrainedConfig.adapt_lr; 0.3 is its default)."""
BASELINE_LATER_FRACTIONS = (1.0, 0.5, 0.25, 0.1)
"""The baselines' later steps: first step size times this (1.0: a constant step, PretrainedAgent's own)."""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path (PNG beside it)")
    parser.add_argument("--iterations", type=int, default=None, help="MAML meta-iterations (default 100)")
    parser.add_argument("--inner-lr", type=float, default=0.1, help="MAML inner step size (paper 0.1, code 0.5)")
    parser.add_argument("--first-order", action="store_true", help="FOMAML instead of second order")
    parser.add_argument("--outer", default="trpo", choices=("trpo", "ppo"), help="MAML outer optimiser")
    parser.add_argument("--seed", type=int, default=0, help="training seed of every learner")
    parser.add_argument("--skip-baselines", action="store_true", help="train and evaluate MAML only")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the training runs (checkpoints, progress.csv) here instead of a temporary folder")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # small networks on a shared 2-core machine: see TrainConfig.threads
    wall = time.perf_counter()
    quick = args.quick
    iterations = args.iterations if args.iterations is not None else (2 if quick else 100)
    out = args.out or (Path(tempfile.mkdtemp()) / "maml_rl_navigation.json" if quick else RESULTS)
    n_tasks, episodes, budget = (4, 4, 2) if quick else (40, 40, 4)
    sizes: dict[str, Any] = dict(hidden=(16, 16), meta_batch_size=3) if quick else {}
    maml_cfg = MamlRLConfig(**sizes, **(dict(fast_batch_size=3) if quick else {}), inner_lr=args.inner_lr,
                            first_order=args.first_order, outer=args.outer)
    pre_cfg = PretrainedConfig(**sizes, **(dict(episodes_per_task=3) if quick else {}))
    eval_seed, task_seed = 12345, 2024

    grids = (LATER_STEP_FRACTIONS, FINETUNE_GRID, BASELINE_LATER_FRACTIONS)
    grids = tuple(g[:1] for g in grids) if quick else grids  # a smoke test needs one candidate each
    result = compare_maml_with_baselines(
        ENV, maml_cfg, pre_cfg, iterations, args.seed, n_tasks, episodes, budget, task_seed, eval_seed, *grids,
        "oracle (goal observed)", skip_baselines=args.skip_baselines, run_dir=args.run_dir)
    curves, training, selection = result.curves, result.training, result.selection
    maml_mean = curves["maml"].stats
    met = {"after_1_step": bool(budget >= 1 and maml_mean[1]["mean"] >= TARGET["after_1_step"]),
           "after_3_steps": bool(budget >= 3 and maml_mean[3]["mean"] >= TARGET["after_3_steps"])}
    table = format_table(curves)
    wall_time = time.perf_counter() - wall
    payload = {
        "benchmark": "maml_rl_navigation",
        "setup": {
            "env": ENV, "horizon": result.horizon, "quick": quick, "seed": args.seed,
            "test_tasks": n_tasks, "task_seed": task_seed, "split": "test", "budget": budget,
            "episodes_per_step": episodes, "eval_seed": eval_seed,
            "step_size_selection": {"split": f"train ({n_tasks} fresh validation goals, never the test goals)",
                                    "task_seed": task_seed + 1, "criterion": "mean return over steps 1..budget",
                                    "maml_later_step_fractions": grids[0],
                                    "baseline_first_step_grid": grids[1],
                                    "baseline_later_step_fractions": grids[2],
                                    "selected": selection},
            "oracle": "PretrainedAgent on oracle=True (goal appended to the observation), 0 adaptation steps",
            "pretrained_budget": "same number of sampled episodes as MAML",
        },
        "config": {"maml": config_to_dict(maml_cfg), "pretrained": config_to_dict(pre_cfg),
                   "train_loop": config_to_dict(dataclasses.replace(TrainConfig(), iterations=iterations,
                                                                    seed=args.seed, eval_every=0))},
        "curves": {name: c.to_dict() for name, c in curves.items()},
        "paper": PAPER,
        "target": {**TARGET, "met": met},
        "table": table,
        "training": training,
        "selection_wall_time_s": result.selection_time_s,
        "evaluation_wall_time_s": result.evaluation_time_s,
    }
    write_results(out, payload, wall_time_s=wall_time)
    plot_curves(curves, out.with_suffix(".png"), f"MAML-RL on {ENV} ({n_tasks} test goals, {episodes} ep/step)",
                references={"MAML (paper)": PAPER["maml"]})
    print(table)
    print(f"target met: {met}; MAML training {training['maml']['wall_time_s']:.0f} s for {iterations} iterations; "
          f"total wall time {wall_time:.0f} s; wrote {out} and {out.with_suffix('.png')}")
    return payload


if __name__ == "__main__":
    main()


def readme_table(d: dict[str, Any]) -> str:
    """The README's table for this results file (``benchmarks/report.py``)."""
    from adaptation_common import curve_table, machine_line

    s, t = d["setup"], d["training"]["maml"]
    paper = {**d["paper"], "oracle (goal observed)": d["paper"]["oracle"]}
    lines = [f"### MAML-RL on Navigation2D ({s['test_tasks']} held-out goals, {s['episodes_per_step']} episodes per "
             "step; mean return ± 95% CI over goals; the MAML paper's numbers in brackets)", "",
             f"`python benchmarks/maml_rl_navigation.py` ({machine_line(d)}; MAML meta-training "
             f"{t['wall_time_s'] / 60:.1f} min for {t['iterations']} iterations)", "",
             *curve_table(d, paper), "",
             f"Target (after 1 step >= {d['target']['after_1_step']}, after 3 steps >= "
             f"{d['target']['after_3_steps']}): met = {d['target']['met']}. Evaluation step sizes chosen on "
             "validation goals of the train split: " + "; ".join(
                 f"{k} {v['eval_lrs']}" for k, v in s["step_size_selection"]["selected"].items()) + "."]
    return "\n".join(lines)
