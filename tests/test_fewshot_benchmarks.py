"""Smoke runs of the few-shot reproduction benchmarks (``--quick``: tiny budgets, temporary output), in-process."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "omniglot"


@pytest.mark.slow
def test_sinusoid_benchmark_quick_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, benchmark_script: Callable[[str], ModuleType]) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "s.json"
    bench = benchmark_script("fewshot_sinusoid")
    assert bench.main(["--quick", "--out", str(out), "--no-progress", "--shots", "5"]) == 0
    d = json.loads(out.read_text())
    assert set(d["entries"]) == {"maml-5shot", "metasgd-5shot", "lstm-opt-5shot", "lstm-opt-ravi-5shot"}
    e = d["entries"]["maml-5shot"]
    assert e["metric"] == "mse" and e["test"]["n"] == 20 and len(e["curve"]) == 11  # curve to 10 steps
    assert e["protocol"]["reported_after_steps"] == 1 and e["target"]["value"] == 1.13
    assert e["reduced"] and d["provenance"]["machine"]["cpu_count"] >= 1
    from metarl.provenance import STARTUP_COMMIT

    assert e["commit"] == STARTUP_COMMIT  # the code the run started from, not the checkout's at write time
    assert d["entries"]["lstm-opt-5shot"]["reached_target"] is None  # no published number
    assert "| MAML (1 step) |" in bench.readme_table(d)


@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "images_background_small1.zip").exists(), reason=f"no Omniglot data at {DATA}")
def test_omniglot_benchmark_quick_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, benchmark_script: Callable[[str], ModuleType]) -> None:
    monkeypatch.setenv("METARL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "o.json"
    bench = benchmark_script("fewshot_omniglot")
    assert bench.main(["--quick", "--out", str(out), "--no-progress"]) == 0
    d = json.loads(out.read_text())
    assert set(d["entries"]) == set(bench.SETTINGS)
    proto = d["entries"]["protonet-1shot"]
    assert proto["protocol"]["transductive"] is False and "20-way" in proto["others"]
    assert d["entries"]["maml-5w1s"]["protocol"]["transductive"] is True
    assert all(e["reduced"] and e["test"]["n"] == 4 for e in d["entries"].values())
    table = bench.readme_table(d)
    rows = [line for line in table.splitlines() if line.startswith("| ")][2:]  # after the header and rule
    assert len(rows) == len(bench.SETTINGS) + 2  # one per setting, plus the 20-way tests of the two ProtoNet settings
    assert table.startswith("### Few-shot Omniglot") and "`python benchmarks/fewshot_omniglot.py`" in table
