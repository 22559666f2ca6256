"""Logger: CSV contents, growing columns, TensorBoard events, hyperparameters, exact resume."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.logging import Logger


def _csv(run: Path) -> str:
    return (run / "progress.csv").read_text()


def _metrics(step: int) -> dict[str, float]:
    """What a training loop might log: eval metrics every 2 steps, a key that first appears at step 5."""
    m = {"train/loss": 1.0 / step, "rollout/return_mean": step * 0.5, "time/steps_per_s": 100.0 + step}
    if step % 2 == 0:
        m["meta/post_adapt_return"] = step * 2.0
    if step >= 5:
        m["late/x"] = -step
    return m


def _log(logger: Logger, steps: range) -> None:
    for step in steps:
        for k, v in _metrics(step).items():
            logger.record(k, v)
        logger.dump(step)


def test_csv_contents_with_growing_columns(tmp_path: Path) -> None:
    with Logger(tmp_path, use_tensorboard=False) as logger:
        logger.record("train/loss", 0.5)
        logger.record("rollout/return_mean", np.float32(2.0))
        logger.record("train/loss", 0.25)  # the last record before a dump wins
        assert logger.dump(1) == {"train/loss": 0.25, "rollout/return_mean": 2.0}
        assert _csv(tmp_path) == "step,rollout/return_mean,train/loss\n1,2.0,0.25\n"
        assert logger.dump(2) == {}  # nothing recorded: no row
        logger.record("train/loss", torch.tensor(0.125))
        logger.record("meta/post_adapt_return", 3)
        logger.dump(3)
        # a new key rewrites the header once; earlier rows get empty cells
        assert _csv(tmp_path) == ("step,rollout/return_mean,train/loss,meta/post_adapt_return\n"
                                  "1,2.0,0.25,\n"
                                  "3,,0.125,3.0\n")
        logger.record("train/loss", 0.1 + 0.2)
        logger.dump(4)
    assert _csv(tmp_path).splitlines()[-1] == "4,,0.30000000000000004,"  # floats round-trip exactly
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_tensorboard_events_and_hparams(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = Logger(tmp_path)
    logger.log_hparams({"algo": "maml-rl", "lr": 0.1, "out": tmp_path, "hidden": (64, 64),
                        "seed": np.int64(3), "device": torch.device("cpu")})
    with pytest.raises(RuntimeError, match="once per run"):
        logger.log_hparams({"lr": 0.2})
    _log(logger, range(1, 4))
    logger.close()
    logger.close()  # idempotent
    assert list(tmp_path.glob("events.out.tfevents.*"))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == {"algo": "maml-rl", "lr": 0.1, "out": str(tmp_path), "hidden": [64, 64], "seed": 3,
                      "device": "cpu"}
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert "meta/post_adapt_return" in acc.Tags()["scalars"]
    assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert "hparams/text_summary" in acc.Tags()["tensors"]
    with pytest.raises(RuntimeError, match="closed"):
        logger.record("train/loss", 1.0)


@pytest.mark.parametrize("resume_step", [0, 1, 3, 4])
def test_resume_truncates_to_an_uninterrupted_csv(tmp_path: Path, resume_step: int) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    with Logger(full, use_tensorboard=False) as logger:
        _log(logger, range(1, 8))
    with Logger(part, use_tensorboard=False) as logger:
        _log(logger, range(1, 7))  # ran past the last checkpoint (step resume_step), then crashed ...
    with open(part / "progress.csv", "a") as f:
        f.write("7,0.14")  # ... in the middle of writing a row
    with Logger(part, use_tensorboard=False, resume_step=resume_step) as logger:
        _log(logger, range(resume_step + 1, 8))
    assert _csv(part) == _csv(full)


def test_resume_hides_later_tensorboard_events(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with Logger(tmp_path) as logger:
        _log(logger, range(1, 6))
    with Logger(tmp_path, resume_step=2) as logger:
        _log(logger, range(3, 5))
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def test_resume_without_csv_and_csv_disabled(tmp_path: Path) -> None:
    with Logger(tmp_path / "a", use_tensorboard=False, resume_step=5) as logger:  # nothing to truncate
        _log(logger, range(6, 7))
    assert _csv(tmp_path / "a").splitlines()[1].startswith("6,")
    with Logger(tmp_path / "b", use_tensorboard=False, csv=False) as logger:
        _log(logger, range(1, 3))
    assert not (tmp_path / "b" / "progress.csv").exists()


def test_warnings_and_errors(tmp_path: Path) -> None:
    with Logger(tmp_path, use_tensorboard=False) as logger:
        _log(logger, range(1, 3))
    with pytest.warns(UserWarning, match="already holds a log; it is replaced"):
        logger = Logger(tmp_path, use_tensorboard=False)
    assert not (tmp_path / "progress.csv").exists()
    logger.record("a/b", 1.0)
    logger.dump(5)
    logger.record("a/b", 1.0)
    with pytest.warns(UserWarning, match="steps should increase"):
        logger.dump(5)
    with pytest.raises(ValueError, match="non-empty str"):
        logger.record("", 1.0)
    with pytest.raises(ValueError, match="other than 'step'"):
        logger.record("step", 1.0)
    with pytest.raises(TypeError, match="must be a number"):
        logger.record("a/b", "high")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a number"):
        logger.record("a/b", torch.ones(3))
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        logger.log_hparams({"fn": object()})
    logger.record("never/dumped", 1.0)
    with pytest.warns(UserWarning, match="never dumped"):
        logger.close()
    with pytest.raises(ValueError, match="resume_step must be"):
        Logger(tmp_path, use_tensorboard=False, resume_step=-1)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "progress.csv").write_text("time,x\n1,2\n")
    with pytest.raises(ValueError, match="not a metarl progress log"):
        Logger(tmp_path / "other", use_tensorboard=False, resume_step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a normal run warns about nothing
        with Logger(tmp_path / "clean", use_tensorboard=False) as logger:
            _log(logger, range(1, 3))
