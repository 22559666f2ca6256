"""A run interrupted by Ctrl-C or killed outright resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarl.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["pretrained", "--env", "metarl/Navigation2D-v0", "--meta-batch-size", "3", "--episodes-per-task", "2",
        "--eval-every", "0", "--eval-tasks", "2", "--checkpoint-every", "1", "--adapt-episodes", "2",
        "--hidden", "16", "--no-progress"]


def _train(out: Path, iterations: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *ARGS, "--out", str(out),
                             "--iterations", str(iterations), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_iteration(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        csv = out / "progress.csv"
        if csv.exists() and len(csv.read_text().strip().splitlines()) - 1 >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(0.05)
    raise AssertionError("training did not reach iteration {n} in time")


def _params(out: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["learner"]["policy"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _train(out, 8)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return out


def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "run"
    proc = _train(out, 8)
    _wait_for_iteration(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "--resume" in err and "Traceback" not in err
    done = load_checkpoint(out / "checkpoint.pt")["iteration"]
    assert 2 <= done < 8
    resumed = _train(out, 8, "--resume")
    assert resumed.wait(timeout=300) == 0
    for k, v in _params(reference).items():
        torch.testing.assert_close(_params(out)[k], v, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [1, 3, 5])
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, reference: Path, kill_after: int) -> None:
    out = tmp_path / "run"
    proc = _train(out, 8)
    _wait_for_iteration(out, kill_after, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    resumed = _train(out, 8, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    for k, v in _params(reference).items():
        torch.testing.assert_close(_params(out)[k], v, rtol=0, atol=0)
    ref_rows = (reference / "progress.csv").read_text().splitlines()
    rows = (out / "progress.csv").read_text().splitlines()
    assert len(rows) == len(ref_rows)
