"""Smoke run of the main job (``bash scripts/quickstart.sh`` runs ``metarl demo``) on one iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from metarl.cli import main


@pytest.mark.slow
def test_demo_trains_evaluates_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--iterations", "1", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "| maml-rl |" in printed and "| random |" in printed and "scratch" in printed
    report = json.loads((out / "evaluation.json").read_text())
    assert report["setup"]["tasks"] == 40 and len(report["curves"]["maml-rl"]["mean"]) == 4
    assert (out / "evaluation.png").stat().st_size > 1000
    assert main(["demo", "--out", str(out)]) == 0  # a finished demo run is evaluated again, not retrained
    assert "already holds a trained demo run" in capsys.readouterr().out
