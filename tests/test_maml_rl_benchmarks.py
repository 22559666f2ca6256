"""Smoke runs of the MAML-RL reproduction benchmarks (``--quick``: tiny budgets, temporary output)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["maml_rl_navigation", "maml_rl_cartpole"])
def test_benchmark_quick_run_writes_every_curve(name: str, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    curves = data["curves"]
    assert {"maml", "pretrained", "random initialisation", "random policy"} <= set(curves)
    assert len(curves["maml"]["mean"]) == data["setup"]["budget"] + 1
    assert len(curves["maml"]["per_task"]) == data["setup"]["test_tasks"]
    assert any(k.startswith("oracle") for k in curves)
    assert data["provenance"]["machine"]["cpu_count"] >= 1
    assert out.with_suffix(".png").stat().st_size > 1000
    assert data["training"]["maml"]["iterations"] == 2
