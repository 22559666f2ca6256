"""Omniglot few-shot classification: ProtoNet, MAML, first-order MAML and Reptile against their papers.

Data: the official ``images_background.zip`` and ``images_evaluation.zip`` (``--data-dir``; default
``../shared/data/omniglot`` beside the repository), 28x28, rotations as classes, the Vinyals split
(1028 / 172 / 423 characters x 4 rotations; :mod:`metarl.data.omniglot`). Every number is the query
accuracy on episodes of the *test* characters, mean ± 95% CI over episodes, with the protocol (ways,
shots, queries per class, adaptation steps, BatchNorm policy) in the results file.

Settings (``--settings``; each trains one model through :func:`metarl.training.train`, seed 0):

- ``protonet-1shot`` / ``protonet-5shot`` (Snell et al. 2017): Conv-4 with max-pooling, trained on
  60-way episodes with 5 queries per class and the test's shots, Adam 1e-3 halved every 2000 episodes;
  tested on 1000 episodes of 5-way and of 20-way (the same model, as the paper), 15 queries per class,
  BatchNorm with the running averages (non-transductive, the reference code's ``model.eval()``).
- ``maml-5w1s`` / ``fomaml-5w1s`` (Finn et al. 2017): Conv-4 with stride-2 convolutions, meta-batch 32,
  one inner step of 0.4 in training and 3 at test, Adam 1e-3, K queries per class in training (MAML's
  code), transductive BatchNorm (query-set statistics, the reference code).
- ``maml-20w1s``: meta-batch 16, 5 inner steps of 0.1 in training and at test.
- ``reptile-5w1s`` (Nichol et al. 2018): Conv-4 stride-2 flattened, inner Adam (beta1 = 0, 1e-3) for 5
  steps on batches of 10 from 10 shots per class, meta-batch 5, outer step 1 -> 0; 50 test steps on the
  support set; transductive (the paper's Omniglot table).
Test: 1000 episodes per number. Queries per class follow each paper's code, because with transductive
BatchNorm the query count changes the statistics the queries are normalised with: 15 for ProtoNet
(non-transductive: the count does not change a prediction), and for the MAML family as many as in
meta-training: K = 1 per class (MAML's ``data_generator``, Reptile's ``num_shots + 1`` samples). Measured
on one MAML 5-way 1-shot model (2,000 iterations; 200 test episodes): 95.1% with 1 query per class, 92.7%
with 15, i.e. normalising with statistics of a larger batch than in training costs ~2.5 points.

The papers train for 60,000 (MAML) and 100,000 (Reptile) meta-iterations, and ProtoNet until its
validation loss stops improving; that does not fit on 2 shared CPU cores, so each setting's iteration
budget here (``BUDGETS``) is what fits in about 40 minutes, and the results file labels it ``reduced``
with the paper's budget beside it.

Run: ``python benchmarks/fewshot_omniglot.py --settings protonet-1shot`` (one setting; entries of earlier
runs are kept; ``--resume`` continues a killed run from its checkpoint in ``runs/fewshot-bench/``), or
``--quick`` (the small background subsets with a random split, a few iterations; a temporary file
unless ``--out``). Results: ``benchmarks/results/fewshot_omniglot.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from adaptation_common import machine_line
from fewshot_common import RUNS, finish, fmt, run_setting

from metarl.fewshot import FewShotDataConfig

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fewshot_omniglot.json"
PROTOCOL = "Vinyals split test characters, mean accuracy ± 95% CI over episodes"
DATA = HERE.parents[1] / "shared" / "data" / "omniglot"

# name: (learner, ways, shots, learner options, data options, budget, paper budget, test episodes)
SETTINGS: dict[str, dict[str, Any]] = {
    "protonet-1shot": {"learner": "protonet", "ways": 5, "shots": 1, "options": {},
                       "data": {"train_ways": 60, "train_queries": 5}, "iterations": 1500,
                       "paper": "60-way episodes until the validation loss stops improving", "episodes": 1000,
                       "also": {"20-way": 20}},
    "protonet-5shot": {"learner": "protonet", "ways": 5, "shots": 5, "options": {},
                       "data": {"train_ways": 60, "train_queries": 5}, "iterations": 1000,
                       "paper": "60-way episodes until the validation loss stops improving", "episodes": 1000,
                       "also": {"20-way": 20}},
    "maml-5w1s": {"learner": "maml", "ways": 5, "shots": 1,
                  "options": {"meta_batch_size": 32, "inner_steps": 1, "inner_lr": 0.4, "eval_steps": 3,
                              "batching": "vmap"},
                  "data": {"train_queries": 1, "queries": 1}, "iterations": 2000,
                  "paper": "60,000 iterations x 32 tasks", "episodes": 1000},
    "fomaml-5w1s": {"learner": "fomaml", "ways": 5, "shots": 1,
                    "options": {"meta_batch_size": 32, "inner_steps": 1, "inner_lr": 0.4, "eval_steps": 3,
                                "batching": "vmap"},
                    "data": {"train_queries": 1, "queries": 1}, "iterations": 4000,
                    "paper": "60,000 iterations x 32 tasks", "episodes": 1000},
    "maml-20w1s": {"learner": "maml", "ways": 20, "shots": 1,
                   "options": {"meta_batch_size": 16, "inner_steps": 5, "inner_lr": 0.1, "eval_steps": 5},
                   "data": {"train_queries": 1, "queries": 1}, "iterations": 300,
                   "paper": "60,000 iterations x 16 tasks", "episodes": 1000},
    "reptile-5w1s": {"learner": "reptile", "ways": 5, "shots": 1, "options": {},
                     "data": {"train_shots": 10, "train_queries": 0, "queries": 1}, "iterations": 3000,
                     "paper": "100,000 iterations x 5 tasks", "episodes": 1000},
}
TARGETS = {("protonet", 5, 1): 98.8, ("protonet", 5, 5): 99.7, ("protonet", 20, 1): 96.0, ("protonet", 20, 5): 98.9,
           ("maml", 5, 1): 98.7, ("maml", 20, 1): 95.8, ("fomaml", 5, 1): 98.3, ("reptile", 5, 1): 97.68}
SOURCES = {"protonet": "Snell et al. 2017, Table 1", "maml": "Finn et al. 2017, Table 1",
           "fomaml": "Finn et al. 2017, Table 1 (first order approx.)",
           "reptile": "Nichol et al. 2018, Table 1 (transductive)"}


def _row(label: str, r: dict[str, Any], iterations: int, train_s: float) -> str:
    p = r["protocol"]
    t = r["target"]["value"]
    return (f"| {label} | {p['ways']}-way {p['shots']}-shot | {fmt(r['test'])} | {r['test']['n']} | {t:.2f} | "
            f"{p['queries']} / {'yes' if p['transductive'] else 'no'} | {iterations:,} | {train_s / 60:.0f} min |")


def readme_table(d: dict[str, Any]) -> str:
    """The README table of a results file written by this script."""
    lines = ["### Few-shot Omniglot (Vinyals split, test characters; accuracy % ± 95% CI over the test episodes; "
             "paper's number; all reduced budgets)", "",
             f"`python benchmarks/fewshot_omniglot.py` ({machine_line(d)})", "",
             "| learner | task | test accuracy (%) | test episodes | paper | queries per class / transductive BN | "
             "meta-iterations (reduced) | training |", "| --- | --- | --- | ---: | --- | --- | --- | --- |"]
    for key in SETTINGS:
        e = d["entries"].get(key)
        if e is None:
            continue
        it, train_s = e["training"]["iterations"], e["training"]["wall_time_s"]
        lines.append(_row(e["learner"], e, it, train_s))
        for other in e["others"].values():
            lines.append(_row(e["learner"], other, it, train_s))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument("--iterations", type=int, default=0, help="override the settings' iteration budgets")
    parser.add_argument("--resume", action="store_true", help="continue the settings' run folders")
    parser.add_argument("--quick", action="store_true", help="small subsets, random split, a few iterations")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = args.out or (Path(tempfile.mkdtemp()) / "fewshot_omniglot.json" if args.quick else RESULTS)
    t0 = time.perf_counter()
    entries = {}
    for key in args.settings:
        s = SETTINGS[key]
        base: dict[str, Any] = {"dataset": "omniglot", "data_dir": str(args.data_dir), "ways": s["ways"],
                                "shots": s["shots"], "queries": 15, **s["data"]}  # s["data"] may set queries
        options = dict(s["options"])
        if args.quick:  # tiny network and data: a smoke test of the whole script
            base.update(sources=("images_background_small1",), split="random", ways=min(s["ways"], 5), queries=2,
                        **({"train_ways": 10} if "train_ways" in base else {}))
            gradient_based = s["learner"] != "protonet"
            options.update(hidden=(8,), **({"meta_batch_size": 2, "eval_steps": 2} if gradient_based else {}))
        data = FewShotDataConfig(**base)
        also = {name: dataclasses.replace(data, ways=ways if not args.quick else 3)
                for name, ways in s.get("also", {}).items()}
        iterations = 2 if args.quick else (args.iterations or s["iterations"])
        target = TARGETS[(s["learner"], s["ways"], s["shots"])]
        entry = run_setting(key, s["learner"], data, options, iterations=iterations,
                            test_episodes=4 if args.quick else s["episodes"], test_budget=-1,
                            target={"value": target, "source": SOURCES[s["learner"]]}, paper_budget=s["paper"],
                            runs_dir=None if args.quick else RUNS / "omniglot", resume=args.resume,
                            progress=not args.no_progress, evaluations=also, eval_tasks=2 if args.quick else 20)
        for name, other in entry["others"].items():
            other["target"] = {"value": TARGETS[(s["learner"], also[name].ways if not args.quick else 20,
                                                 s["shots"])], "source": SOURCES[s["learner"]]}
            other["reached_target"] = other["test"]["mean"] >= other["target"]["value"]
        entry["reduced"] = True
        entry["reduction"] = f"{iterations:,} meta-iterations (paper: {s['paper']})"
        entries[key] = entry
        print(f"{key}: test accuracy {fmt(entry['test'])} (target {target}); trained "
              f"{entry['training']['wall_time_s']:.0f} s", file=sys.stderr)
    return finish(out, entries, "fewshot_omniglot", PROTOCOL, args.quick, time.perf_counter() - t0,
                  readme_table)


if __name__ == "__main__":
    raise SystemExit(main())
