"""The shared training loop with a supervised learner: metric names, held-out split, exact resume."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from metarl.provenance import STARTUP_COMMIT
from metarl.training import SEGMENTS, TrainConfig, adaptation_metrics, held_out_tasks, read_segments, train


@dataclass(frozen=True)
class _Result:
    metric: str
    stage_values: np.ndarray


@dataclass(frozen=True)
class _RLResult:
    stage_returns: np.ndarray


def test_adaptation_metrics_name_the_metric() -> None:
    curve = np.array([[0.2, 0.6], [0.4, 0.8]])
    assert adaptation_metrics(_Result("accuracy", curve)) == pytest.approx(
        {"meta/pre_adapt_accuracy": 0.3, "meta/post_adapt_accuracy": 0.7, "meta/adaptation_gain": 0.4})
    assert adaptation_metrics(_RLResult(-curve)) == pytest.approx(
        {"meta/pre_adapt_return": -0.3, "meta/post_adapt_return": -0.7, "meta/adaptation_gain": -0.4})


class _Source:
    """Scalar regression 'episodes' y = w * x with w ~ U[1, 2] (train/val) drawn from the given rng."""

    held_out_split = "val"

    def __init__(self) -> None:
        self.splits: list[str] = []

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[float]:
        self.splits.append(split)
        return [float(w) for w in rng.uniform(1.0, 2.0, size=n)]


@dataclass
class _Config:
    meta_batch_size: int = 2


@dataclass
class _Learner:
    """Learns the mean slope by SGD; 'adapting' to a task means predicting its slope exactly."""

    config: _Config = field(default_factory=_Config)
    w: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    def meta_train_step(self, tasks: list[float]) -> dict[str, float]:
        noise = torch.randn(()) * 1e-3  # uses torch's seeded stream, as real learners do
        self.w = self.w + 0.5 * (torch.tensor(tasks).mean() - self.w) + noise
        return {"train/loss": float((torch.tensor(tasks) - self.w).pow(2).mean())}

    def adapt_many(self, tasks: list[float], budget: int, seed: int) -> _Result:
        errors = np.array([[(t - float(self.w)) ** 2] + [0.0] * budget for t in tasks])
        return _Result("mse", errors)

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w = state["w"].clone()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_train_logs_the_named_metric_and_checks_on_the_sources_split(tmp_path: Path) -> None:
    source = _Source()
    config = TrainConfig(iterations=4, eval_every=2, eval_tasks=3, checkpoint_every=1)
    metrics = train(_Learner(), source, tmp_path / "run", config, {"algo": "toy"}, progress=False)
    assert "meta/post_adapt_mse" in metrics and metrics["meta/post_adapt_mse"] == 0.0
    assert "meta/post_adapt_return" not in metrics
    assert source.splits[0] == "val" and set(source.splits[1:]) == {"train"}
    rows = _rows(tmp_path / "run" / "progress.csv")
    assert rows[1]["meta/pre_adapt_mse"] != "" and rows[0]["meta/pre_adapt_mse"] == ""
    assert held_out_tasks(source, 3, 0) == held_out_tasks(source, 3, 0)


def test_resume_of_a_supervised_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    train(_Learner(), _Source(), full, TrainConfig(iterations=4, checkpoint_every=1), {"algo": "toy"}, progress=False)
    train(_Learner(), _Source(), part, TrainConfig(iterations=2, checkpoint_every=1), {"algo": "toy"}, progress=False)
    resumed = _Learner()
    train(resumed, _Source(), part, TrainConfig(iterations=4, checkpoint_every=1), {"algo": "toy"}, resume=True,
          progress=False)
    from metarl.checkpoint import load_checkpoint

    a = load_checkpoint(full / "checkpoint.pt")["learner"]["w"]
    b = load_checkpoint(part / "checkpoint.pt")["learner"]["w"]
    assert torch.equal(a, b)
    assert [r["train/loss"] for r in _rows(full / "progress.csv")] == [r["train/loss"] for r in
                                                                      _rows(part / "progress.csv")]
    # Each launch is one line of segments.jsonl: the resumed run names both, with the code that trained them.
    assert [(s["from_iteration"], s["to_iteration"]) for s in read_segments(part)] == [(0, 2), (2, 4)]
    assert [(s["from_iteration"], s["to_iteration"]) for s in read_segments(full)] == [(0, 4)]
    assert {s["commit"] for s in read_segments(part)} == {STARTUP_COMMIT}
    assert read_segments(tmp_path) == []  # a folder without the file: a run from before it existed


def test_a_broken_segments_line_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / SEGMENTS).write_text('{"from_iteration": 0}\n{"from_iter')
    with pytest.raises(ValueError, match=r"segments\.jsonl, line 2: not a JSON object"):
        read_segments(tmp_path)
