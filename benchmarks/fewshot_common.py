"""What the few-shot reproduction benchmarks share (``fewshot_sinusoid.py``, ``fewshot_omniglot.py``).

:func:`run_setting` trains one learner through :func:`metarl.training.train` (the loop ``metarl fewshot``
runs: checkpoints every 10% of the run, so ``--resume`` continues a killed benchmark) and evaluates it on
held-out episodes with :func:`metarl.fewshot.evaluate_fewshot`, returning one results entry: the test
metric with its 95% CI, the adaptation curve, the paper's target, the protocol, the training budget
(and how it differs from the paper's), wall times (``step_time_s``: the meta-training steps of the whole
run, resumed parts included, from its ``progress.csv``), commit and date. :func:`update_results` merges entries
into a results file, so settings can be run one at a time.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from metarl.config import config_from_dict, config_to_dict
from metarl.fewshot import (
    FewShotDataConfig,
    build_source,
    check_data,
    data_protocol,
    evaluate_fewshot,
    learners,
)
from metarl.provenance import code_commit, write_results
from metarl.training import CHECKPOINT, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "fewshot-bench"  # git-ignored; one resumable run folder per setting


def run_setting(key: str, learner: str, data: FewShotDataConfig, overrides: Mapping[str, Any], iterations: int,
                test_episodes: int, test_budget: int, target: Mapping[str, Any], paper_budget: str, seed: int = 0,
                eval_every: int = 0, runs_dir: Path | None = RUNS, resume: bool = False, progress: bool = True,
                evaluations: Mapping[str, FewShotDataConfig] | None = None, test_seed: int = 12345,
                curve_budget: int = 0, eval_tasks: int = 20) -> dict[str, Any]:
    """Train ``learner`` on ``data`` for ``iterations`` and evaluate it (also under each of ``evaluations``:
    other test shapes of the same trained model, e.g. ProtoNet's 20-way test of a 60-way-trained model).

    The reported number is the query metric after ``test_budget`` steps (-1: the learner's ``eval_steps``);
    the curve goes on to ``curve_budget`` steps when that is larger."""
    config_cls, learner_cls, preset = learners()[learner]
    algo = config_from_dict(config_cls, {**preset, **overrides})
    if getattr(algo, "meta_iterations", None) == 0:
        algo = dataclasses.replace(algo, meta_iterations=iterations)
    counts = check_data(data, head_learner=learner != "protonet")
    model = learner_cls(algo, data.problem(), seed=seed, device="cpu")
    source = build_source(data)
    budget = test_budget if test_budget >= 0 else int(getattr(algo, "eval_steps", 0))
    train_cfg = TrainConfig(iterations=iterations, seed=seed, eval_every=eval_every, eval_tasks=eval_tasks,
                            eval_budget=budget, checkpoint_every=max(1, iterations // 10))
    run_dir = (runs_dir / key) if runs_dir is not None else None
    t0 = time.perf_counter()
    if run_dir is not None:
        run_info = {"command": "fewshot", "algo": learner, "algo_config": config_to_dict(algo),
                    "data": config_to_dict(data), "test": {}}
        metrics = train(model, source, run_dir, train_cfg, run_info,
                        resume=resume and (run_dir / CHECKPOINT).exists(), progress=progress)
    else:  # quick runs: no folder kept
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            metrics = train(model, source, tmp, train_cfg, {"algo": learner}, progress=progress)
    train_s = time.perf_counter() - t0
    step_s = _logged_step_time(run_dir) if run_dir is not None else train_s
    tests = {"": data, **(evaluations or {})}
    results = {}
    for name, test_data in tests.items():
        t1 = time.perf_counter()
        test_source = source if name == "" else build_source(test_data)
        protocol = {**data_protocol(test_data, counts if name == "" else check_data(test_data, False)),
                    "train_iterations": iterations}
        ev = evaluate_fewshot(model, test_source, learner, test_episodes, max(budget, curve_budget), test_seed,
                              protocol={**protocol, "reported_after_steps": budget})
        final = ev.stats[budget]
        goal = target.get("value")
        better = None if goal is None else bool(final.mean >= goal if ev.metric == "accuracy" else final.mean <= goal)
        results[name] = {"metric": ev.metric, "test": final.to_dict(), "curve": [s.to_dict() for s in ev.stats],
                         "target": dict(target), "reached_target": better, "protocol": ev.protocol,
                         "eval_wall_time_s": time.perf_counter() - t1}
    entry = {**results.pop(""), "learner": learner, "config": config_to_dict(algo), "others": results,
             "training": {"iterations": iterations, "meta_batch_size": getattr(algo, "meta_batch_size", None),
                          "paper_budget": paper_budget, "wall_time_s": train_s, "step_time_s": step_s,
                          "final_metrics": {k: v for k, v in metrics.items() if not k.startswith("time/")},
                          "threads": torch.get_num_threads()},
             **code_commit()}  # the commit the run started from (a long run's checkout may move on)
    return entry


def _logged_step_time(run_dir: Path) -> float:
    """Seconds spent in ``meta_train_step`` over the whole run (all resumed parts), from ``progress.csv``."""
    import csv

    with open(run_dir / "progress.csv", newline="") as f:
        return float(sum(float(r["time/iteration_s"]) for r in csv.DictReader(f) if r.get("time/iteration_s")))


def update_results(path: Path, entries: Mapping[str, dict[str, Any]], header: Mapping[str, Any],
                   wall_time_s: float, keep_existing: bool = True) -> Path:
    """Write ``header`` and the entries into ``path``, keeping the entries of earlier runs not re-run now."""
    old: dict[str, Any] = {}
    if keep_existing and path.exists():
        old = json.loads(path.read_text()).get("entries", {})
    return write_results(path, {**header, "entries": {**old, **entries}}, wall_time_s=wall_time_s)


def fmt(stat: Mapping[str, float], digits: int = 2, unit: str = "") -> str:
    return f"{stat['mean']:.{digits}f}{unit} ± {stat['ci95']:.{digits}f}"


def finish(out: Path, entries: Mapping[str, dict[str, Any]], name: str, protocol: str, quick: bool,
           wall_time_s: float, table: Callable[[dict[str, Any]], str]) -> int:
    """Merge the entries into the results file, print its README table and where it went."""
    header = {"benchmark": name, "quick": quick, "protocol": protocol}
    path = update_results(out, entries, header, wall_time_s, keep_existing=not quick)
    print(table(json.loads(path.read_text())))
    print(f"wrote {path}", file=sys.stderr)
    return 0
