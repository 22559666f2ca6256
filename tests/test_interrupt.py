"""A run interrupted by Ctrl-C or killed outright resumes to the same result as an uninterrupted one."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


# -- many kills at random points, in forked children (no interpreter start-up per kill) ------------------

CHAIN_ARGS = ["train", "pretrained", "--env", "metarl/Navigation2D-v0", "--meta-batch-size", "2",
              "--episodes-per-task", "2", "--eval-every", "7", "--eval-tasks", "2", "--checkpoint-every", "1",
              "--adapt-episodes", "2", "--hidden", "8", "--no-progress", "--iterations", "30"]


def _child(argv: list[str], die_in_save: int | None) -> None:
    """Run ``metarl train`` in a forked child; with ``die_in_save=n`` SIGKILL itself halfway through
    writing its n-th checkpoint (the bytes of a half-written file are on disk when it dies)."""
    import io

    from metarl import checkpoint, cli

    devnull = open(os.devnull, "w")  # noqa: SIM115 - the child exits without closing anything
    sys.stdout = sys.stderr = devnull
    if die_in_save is not None:
        real_save = checkpoint.torch.save
        calls = [0]

        def save(obj: object, f: io.BufferedWriter) -> None:
            calls[0] += 1
            if calls[0] == die_in_save:
                buf = io.BytesIO()
                real_save(obj, buf)
                f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real_save(obj, f)

        checkpoint.torch.save = save  # type: ignore[assignment]
    os._exit(cli.main(argv))


def _fork(argv: list[str], die_in_save: int | None = None) -> multiprocessing.process.BaseProcess:
    # Imported once here, not in every child: TensorBoard's import and the torch._dynamo import that
    # the first optimizer construction triggers take ~2 s each.
    import torch.utils.tensorboard  # noqa: F401

    from metarl import cli

    cli._algorithms()
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, die_in_save))
    proc.start()
    return proc


def _rows(out: Path) -> int:
    csv = out / "progress.csv"
    return max(len(csv.read_text().splitlines()) - 1, 0) if csv.exists() else 0


@pytest.mark.slow
def test_24_sigkills_at_random_points_then_resume_matches_uninterrupted(tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    child = _fork([*CHAIN_ARGS, "--out", str(ref)])
    child.join(120)
    assert child.exitcode == 0
    out = tmp_path / "run"
    argv = [*CHAIN_ARGS, "--out", str(out)]
    rng = np.random.default_rng(2026)
    kills = 0
    # 19 kills at random times (the first two before any checkpoint can exist), then 5 inside a
    # checkpoint write; after every kill the checkpoint on disk must load.
    for k in range(24):
        resume = ["--resume"] if (out / "config.json").exists() else []
        rows = _rows(out)
        if k < 19:
            child = _fork([*argv, *resume])
            deadline = time.time() + 60
            while k >= 2 and _rows(out) <= rows and child.is_alive() and time.time() < deadline:
                time.sleep(0.005)
            time.sleep(float(rng.uniform(0.0, 0.08)))
        else:
            child = _fork([*argv, *resume], die_in_save=int(rng.integers(1, 3)))
        if child.is_alive() or k >= 19:
            os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(60)
        kills += int(child.exitcode == -signal.SIGKILL)
        if (out / "checkpoint.pt").exists():
            assert load_checkpoint(out / "checkpoint.pt")["iteration"] <= 30
    assert kills >= 22, f"only {kills} of 24 children died by SIGKILL (the others finished first)"
    child = _fork([*argv, "--resume"])
    child.join(120)
    assert child.exitcode == 0
    for key, value in _params(ref).items():
        torch.testing.assert_close(_params(out)[key], value, rtol=0, atol=0)
    ref_rows = [r.split(",") for r in (ref / "progress.csv").read_text().splitlines()]
    rows_out = [r.split(",") for r in (out / "progress.csv").read_text().splitlines()]
    header = ref_rows[0]
    assert rows_out[0] == header and len(rows_out) == len(ref_rows) == 31
    keep = [i for i, name in enumerate(header) if not name.startswith("time/")]
    assert [[r[i] for i in keep] for r in rows_out] == [[r[i] for i in keep] for r in ref_rows]
