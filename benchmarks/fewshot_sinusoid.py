"""Sinusoid regression (MAML paper sec. 5.1): MAML, Meta-SGD and the LSTM optimizer at 5 and 10 shots.

Tasks (``metarl.data.sinusoid``): ``y = A sin(x - phi)``, ``A ~ U[0.1, 5]``, ``phi ~ U[0, pi]``,
``x ~ U[-5, 5]``; network: MLP 1-40-40-1 ReLU (MAML's). Meta-training episodes have K support and K
query points (MAML's code). Test: 1000 held-out tasks (test split), K support points and 100 query
points each; the reported number is the mean query MSE after the learner's test-time steps (1 for MAML
and Meta-SGD, as the Meta-SGD paper's table), with a 95% CI over tasks. MAML's curve goes on to
``--curve-steps`` steps of the same size (the MAML paper's figure 2); Meta-SGD's learned ``alpha`` is
meant for the one step it was meta-trained with (repeating it diverges on some tasks), so its curve stops there.

Setups:

- ``maml``: the paper's: meta-batch 25, one inner step of 0.01, Adam 1e-3, 70,000 iterations.
- ``metasgd``: the same budget (meta-batch 25, 70,000 iterations, Adam 1e-3), ``alpha ~ U[0.005, 0.1]``,
  one step (the Meta-SGD paper does not list its sinusoid meta-batch or iteration count).
- ``lstm-opt``: the coordinate-wise LSTM optimizer (Andrychowicz et al.; 2 layers x 20, preprocessing
  p = 10, output x 0.1) with a meta-learned initialisation, 5 unrolled steps, meta-batch 4: about 20x the
  cost of a MAML iteration per task, so fewer iterations (``LSTM_ITERATIONS``, or ``--iterations``); no
  published number. ``lstm-opt-ravi``: the same with Ravi & Larochelle's cell (learned forget and input
  gates on the parameters as cell state).

Targets (Meta-SGD paper, Table 1; MSE at 5 / 10 shots): MAML 1.13 / 0.77, Meta-SGD 0.90 / 0.53.

Run: ``python benchmarks/fewshot_sinusoid.py`` (all six settings; about an hour on a busy 2-core machine),
``--learners maml`` (a subset; entries of earlier runs are kept), or ``--quick`` (seconds; a temporary
file unless ``--out``). Results: ``benchmarks/results/fewshot_sinusoid.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from adaptation_common import machine_line
from fewshot_common import RUNS, finish, fmt, run_setting

from metarl.fewshot import FewShotDataConfig

RESULTS = Path(__file__).resolve().parent / "results" / "fewshot_sinusoid.json"
PROTOCOL = "1000 test-split tasks, K support + 100 query points, mean MSE ± 95% CI over tasks"
TARGETS = {("maml", 5): 1.13, ("maml", 10): 0.77, ("metasgd", 5): 0.90, ("metasgd", 10): 0.53}
PAPER_ITERATIONS = 70_000
LSTM_ITERATIONS = 6_000
SETUPS: dict[str, dict[str, Any]] = {
    "maml": {"meta_batch_size": 25, "inner_lr": 0.01, "inner_steps": 1, "eval_steps": 1, "outer_lr": 1e-3},
    "metasgd": {"meta_batch_size": 25, "inner_steps": 1, "eval_steps": 1, "outer_lr": 1e-3},
    "lstm-opt": {"meta_batch_size": 4, "inner_steps": 5, "eval_steps": 5, "outer_lr": 1e-3},
    "lstm-opt-ravi": {"variant": "ravi", "meta_batch_size": 4, "inner_steps": 5, "eval_steps": 5, "outer_lr": 1e-3},
}
LEARNER = {"maml": "maml", "metasgd": "metasgd", "lstm-opt": "lstm-opt", "lstm-opt-ravi": "lstm-opt"}
LABELS = {"maml": "MAML (1 step)", "metasgd": "Meta-SGD (1 step)", "lstm-opt": "LSTM optimizer (5 steps)",
          "lstm-opt-ravi": "LSTM optimizer, Ravi & Larochelle cell (5 steps)"}


def readme_table(d: dict[str, Any]) -> str:
    """The README table of a results file written by this script."""
    rows = ["### Sinusoid regression (MAML's tasks; test MSE ± 95% CI over 1000 held-out tasks, 100 query points)", "",
            f"`python benchmarks/fewshot_sinusoid.py` ({machine_line(d)})", "",
            "| learner | 5 shots | 10 shots | paper (5 / 10) | meta-training (per shot count) |",
            "| --- | --- | --- | --- | --- |"]
    for learner, label in LABELS.items():
        cells, budget = [], ""
        for shots in (5, 10):
            e = d["entries"].get(f"{learner}-{shots}shot")
            cells.append(fmt(e["test"], 3) if e else "–")
            if e:
                t = e["training"]
                budget = (f"{t['iterations']:,} it x {t['meta_batch_size']} tasks, {t['wall_time_s'] / 60:.0f} min"
                          + (" (reduced)" if e["reduced"] else ""))
        paper = " / ".join(f"{TARGETS[(learner, s)]:.2f}" for s in (5, 10)) if (learner, 5) in TARGETS else "–"
        rows.append(f"| {label} | {cells[0]} | {cells[1]} | {paper} | {budget} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--learners", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--shots", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--iterations", type=int, default=0, help="override every setting's iterations")
    parser.add_argument("--test-tasks", type=int, default=1000)
    parser.add_argument("--curve-steps", type=int, default=10,
                        help="test curve length for maml (the MAML paper's figure; Meta-SGD's alpha is for one step)")
    parser.add_argument("--resume", action="store_true", help="continue the settings' run folders")
    parser.add_argument("--quick", action="store_true", help="tiny budget, for a smoke test")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (Path(tempfile.mkdtemp()) / "fewshot_sinusoid.json" if args.quick else RESULTS)
    t0 = time.perf_counter()
    entries = {}
    for setup in args.learners:
        learner = LEARNER[setup]
        for shots in args.shots:
            key = f"{setup}-{shots}shot"
            full = LSTM_ITERATIONS if learner == "lstm-opt" else PAPER_ITERATIONS
            iterations = 3 if args.quick else (args.iterations or full)
            target = TARGETS.get((learner, shots))
            entry = run_setting(
                key, learner, FewShotDataConfig(dataset="sinusoid", shots=shots, queries=100), SETUPS[setup],
                iterations=iterations, test_episodes=20 if args.quick else args.test_tasks,
                test_budget=-1, target={"value": target,
                                        "source": "Meta-SGD paper, Table 1" if target else "none published"},
                paper_budget=f"{PAPER_ITERATIONS:,} iterations x 25 tasks (MAML paper)",
                runs_dir=None if args.quick else RUNS / "sinusoid", resume=args.resume,
                progress=not args.no_progress, curve_budget=args.curve_steps if learner == "maml" else 0,
                eval_tasks=2 if args.quick else 20)
            steps = entry["protocol"]["reported_after_steps"]
            entry["reduced"] = iterations < full or (learner == "lstm-opt")
            entry["reduction"] = ("" if not entry["reduced"] else
                                  f"{iterations:,} iterations x {SETUPS[setup]['meta_batch_size']} tasks")
            entries[key] = entry
            print(f"{key}: test MSE {fmt(entry['test'], 3)} after {steps} step(s) "
                  f"(target {target}); trained {entry['training']['wall_time_s']:.0f} s", file=sys.stderr)
    return finish(out, entries, "fewshot_sinusoid", PROTOCOL, args.quick, time.perf_counter() - t0,
                  readme_table)


if __name__ == "__main__":
    raise SystemExit(main())
