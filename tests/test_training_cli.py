"""End-to-end smoke tests of the scripts, exact resume, and clear errors on bad input."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl.checkpoint import load_checkpoint
from metarl.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--iterations", "3", "--meta-batch-size", "3", "--episodes-per-task", "2", "--eval-every", "2",
        "--eval-tasks", "2", "--checkpoint-every", "1", "--adapt-episodes", "2", "--hidden", "16", "16",
        "--no-progress"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_then_evaluate_through_scripts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "train.py"), "pretrained", "--env", "metarl/Navigation2D-v0",
           "--out", str(run), *TINY]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (run / "checkpoint.pt").exists() and (run / "progress.csv").exists()
    rows = _rows(run / "progress.csv")
    assert len(rows) == 3 and "meta/post_adapt_return" in rows[-1]
    ev = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), str(run), "--tasks", "3",
                         "--budget", "1", "--episodes", "2"], capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr
    assert "| pretrained |" in ev.stdout and "| random |" in ev.stdout
    report = json.loads((run / "evaluation.json").read_text())
    assert set(report["curves"]) >= {"pretrained", "random"}
    assert len(report["curves"]["pretrained"]["mean"]) == 2
    assert [seg["from_iteration"] for seg in report["setup"]["training_segments"]] == [0]
    assert (run / "evaluation.png").stat().st_size > 1000


def test_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", "pretrained", "--out", str(full), *TINY]) == 0
    short = list(TINY)
    short[short.index("--iterations") + 1] = "2"
    assert main(["train", "pretrained", "--out", str(part), *short]) == 0
    assert main(["train", "pretrained", "--out", str(part), "--resume", "--iterations", "3", "--no-progress"]) == 0
    a = load_checkpoint(full / "checkpoint.pt")["learner"]["policy"]
    b = load_checkpoint(part / "checkpoint.pt")["learner"]["policy"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    ra, rb = _rows(full / "progress.csv"), _rows(part / "progress.csv")
    assert len(ra) == len(rb) == 3
    for x, y in zip(ra, rb, strict=True):
        for k in x:
            if not k.startswith("time/"):
                assert x[k] == y[k], k


def test_resume_before_the_first_checkpoint_restarts_from_zero(tmp_path: Path) -> None:
    """A kill after the first logged row but before the first checkpoint leaves config.json and a CSV row."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", "pretrained", "--out", str(full), *TINY]) == 0
    assert main(["train", "pretrained", "--out", str(part), *TINY]) == 0
    (part / "checkpoint.pt").unlink()
    with pytest.warns(UserWarning, match="before its first checkpoint"):
        assert main(["train", "pretrained", "--out", str(part), "--resume", "--no-progress"]) == 0
    a = load_checkpoint(full / "checkpoint.pt")["learner"]["policy"]
    b = load_checkpoint(part / "checkpoint.pt")["learner"]["policy"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert len(_rows(part / "progress.csv")) == 3


def test_resume_of_a_folder_that_never_ran_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "pretrained", "--out", str(tmp_path / "nothing"), "--resume", *TINY]) == 2
    assert "config.json" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "r"
    assert main(["train", "random", "--out", str(run), "--iterations", "1", "--no-progress",
                 "--eval-tasks", "2", "--adapt-episodes", "1", "--meta-batch-size", "2"]) == 0
    assert main(["train", "random", "--out", str(run), "--iterations", "1", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


class _Exploding:
    """A learner whose update breaks its parameter at iteration ``at`` (metrics stay finite)."""

    def __init__(self, at: int, where: str) -> None:
        self.config = type("C", (), {"meta_batch_size": 2})()
        self.w = torch.zeros(3)
        self.steps, self.at, self.where = 0, at, where

    def meta_train_step(self, tasks: object) -> dict[str, float]:
        self.steps += 1
        if self.steps == self.at:
            if self.where == "parameter":
                self.w[1] = float("inf")
            else:
                return {"train/loss": float("nan")}
        return {"train/loss": float(self.steps)}

    def adapt_many(self, tasks: list[object], budget: int, seed: int) -> object:
        import numpy as np

        from metarl.learner import AdaptationResult

        return AdaptationResult(np.zeros((len(tasks), budget + 1)), [])

    def state_dict(self) -> dict[str, object]:
        return {"policy": {"w": self.w.clone()}, "steps": self.steps}

    def load_state_dict(self, state: dict[str, object]) -> None:
        raise AssertionError("not resumed in this test")


@pytest.mark.parametrize("where", ["parameter", "metric"])
def test_non_finite_update_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, where: str) -> None:
    from metarl.rollout import TaskEnvs
    from metarl.training import TrainConfig, train

    envs = TaskEnvs("metarl/Navigation2D-v0")
    config = TrainConfig(iterations=6, eval_every=0, eval_tasks=2, checkpoint_every=1)
    with pytest.raises(FloatingPointError, match=r"iteration 3.*last good checkpoint.*kept.*--resume") as info:
        train(_Exploding(3, where), envs, tmp_path / "run", config, {"algo": "test"}, progress=False)
    assert ("policy.w" in str(info.value)) == (where == "parameter")
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["iteration"] == 2 and torch.isfinite(state["learner"]["policy"]["w"]).all()
