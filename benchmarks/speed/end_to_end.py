"""End-to-end wall-clock to a target (issue 6, item 4), read from the committed training logs; nothing is rerun.

Each number comes from a results file that a reproduction benchmark wrote when it trained (its
provenance names the machine and commit), so this script takes seconds; rerunning the trainings takes
hours on 2 cores. Targets and how each is read:

- MAML-RL Navigation2D, -11 after one adaptation step (``maml_rl_navigation.json``): the test value is
  the curve of the trained meta-policy on the 40 held-out test goals after ``training.maml.iterations``
  iterations, whose summed ``time/iteration_s`` is the training wall-clock. The log also has the
  per-iteration *training* post-adaptation return (the meta-batch's own rollouts, not the test
  protocol); the first iteration where it reaches the target, and the summed iteration times up to
  it, are reported as an indication of when the target was first touched, not as a test result.
- RL² bandits, k = 5 arms, n = 100 pulls, the Gittins index score (``rl2_bandits.json``,
  ``rl2_n100_k5``): the test total reward over 1000 test bandits after training vs the Gittins
  baseline on the same bandits; training wall-clock ``train_wall_time_s``.
- ProtoNet Omniglot 5-way 1-shot, 98% (``fewshot_omniglot.json``, ``protonet-1shot``): test accuracy over
  1000 episodes after training; training wall-clock ``training.wall_time_s``.

A target not reached within the logged run is reported as such, with the run's length: the time to reach
it is then unknown (more than the run), never extrapolated.

Run: ``python benchmarks/speed/end_to_end.py`` (``--quick`` is the same, to a temporary file).
Results: ``benchmarks/results/speed_end_to_end.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_and_print  # noqa: E402

OUT = RESULTS / "speed_end_to_end.json"


def _source(d: dict[str, Any], name: str) -> dict[str, Any]:
    p = d.get("provenance", {})
    return {"file": f"benchmarks/results/{name}", "commit": p.get("commit"), "date_utc": p.get("date_utc"),
            "machine": p.get("machine")}


def navigation(results: Path) -> dict[str, Any]:
    d = json.loads((results / "maml_rl_navigation.json").read_text())
    target = float(d["target"]["after_1_step"])
    train = d["training"]["maml"]
    times = train["history"]["time/iteration_s"]
    post = train["history"]["rollout/post_adapt_return"]
    first = next((i for i, v in enumerate(post) if v >= target), None)
    test_value = float(d["curves"]["maml"]["mean"][1])
    return {"task": "MAML-RL Navigation2D, return after 1 adaptation step", "target": target,
            "higher_is_better": True, "test_value": test_value, "reached": test_value >= target,
            "iterations": train["iterations"], "training_wall_time_s": float(sum(times)),
            "training_env_steps": train["env_steps"],
            "first_training_iteration_at_target": None if first is None else first + 1,
            "training_wall_time_to_first_touch_s": None if first is None else float(sum(times[:first + 1])),
            "how": "test: curves.maml.mean[1] (40 held-out goals, after all iterations); wall-clock: sum of "
                   "training.maml.history['time/iteration_s']; first touch: first iteration whose training "
                   "rollout/post_adapt_return >= target (meta-batch rollouts, not the test protocol)",
            "source": _source(d, "maml_rl_navigation.json")}


def bandits(results: Path) -> dict[str, Any]:
    d = json.loads((results / "rl2_bandits.json").read_text())
    e = d["entries"]["rl2_n100_k5"]
    gittins = float(e["baselines"]["gittins"]["mean"])
    value = float(e["result"]["mean"])
    return {"task": "RL² bandits, k=5 arms, n=100 pulls, total reward vs the Gittins index", "target": gittins,
            "higher_is_better": True, "test_value": value, "test_ci95": e["result"]["ci95"],
            "reached": bool(e["at_or_above_gittins"]), "iterations": e["iterations"],
            "training_wall_time_s": float(e["train_wall_time_s"]), "training_env_steps": e["train_env_steps"],
            "how": "test: entries.rl2_n100_k5.result (1000 test bandits) vs baselines.gittins on the same bandits; "
                   "wall-clock: train_wall_time_s",
            "source": _source(e if "provenance" in e else d, "rl2_bandits.json")}


def protonet(results: Path) -> dict[str, Any]:
    d = json.loads((results / "fewshot_omniglot.json").read_text())
    e = d["entries"]["protonet-1shot"]
    value = float(e["test"]["mean"])
    source = _source(d, "fewshot_omniglot.json") | {"commit": e.get("commit"), "date_utc": e.get("date_utc")}
    return {"task": "ProtoNet Omniglot 5-way 1-shot test accuracy", "target": 98.0, "higher_is_better": True,
            "test_value": value, "test_ci95": e["test"]["ci95"], "reached": value >= 98.0,
            "iterations": e["training"]["iterations"], "training_wall_time_s": float(e["training"]["wall_time_s"]),
            "how": "test: entries.protonet-1shot.test (1000 episodes, non-transductive BatchNorm); wall-clock: "
                   "entries.protonet-1shot.training.wall_time_s",
            **({"machine_note": e["machine_note"]} if "machine_note" in e else {}),
            "source": source}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the same, written to a temporary file")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the training results to read")
    args = parser.parse_args(argv)
    wall = time.perf_counter()
    payload = {"benchmark": "speed_end_to_end", "quick": args.quick,
               "note": "read from committed training logs (no rerun); a target not reached within the logged "
                       "run has no time-to-target",
               "rows": [navigation(args.results), bandits(args.results), protonet(args.results)]}
    out = args.out or (Path(tempfile.mkdtemp()) / "speed_end_to_end.json" if args.quick else OUT)
    write_and_print(out, payload, time.perf_counter() - wall, readme_table)
    return payload


def readme_table(d: dict[str, Any]) -> str:
    """The README's table: target, reached or not, training wall-clock of the logged run."""
    lines = ["### End to end: wall-clock of the committed training runs (2 CPU cores, 1 thread; read from the logs "
             "by `python benchmarks/speed/end_to_end.py`)", "",
             "| task | target | test result | reached | training wall-clock | note |",
             "| --- | ---: | ---: | :---: | ---: | --- |"]
    for r in d["rows"]:
        ci = f" ± {r['test_ci95']:.2f}" if "test_ci95" in r else ""
        note = f"{r['iterations']} iterations"
        if r.get("first_training_iteration_at_target"):
            note += (f"; training rollouts first at target at iteration {r['first_training_iteration_at_target']} "
                     f"({r['training_wall_time_to_first_touch_s'] / 60:.1f} min)")
        if not r["reached"]:
            note += "; not reached within the run: time to target unknown"
        if r.get("machine_note"):
            note += f"; {r['machine_note']}"
        lines.append(f"| {r['task']} | {r['target']:.2f} | {r['test_value']:.2f}{ci} | "
                     f"{'yes' if r['reached'] else 'no'} | {r['training_wall_time_s'] / 60:.1f} min | {note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
