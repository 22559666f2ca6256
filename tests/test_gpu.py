"""The CUDA path runs the same code as the CPU path (skipped without a GPU; CI has none)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.agents.pretrained import PretrainedAgent, PretrainedConfig
from metarl.cli import main
from metarl.rollout import TaskEnvs

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_pretrained_trains_and_adapts_on_cuda() -> None:
    envs = TaskEnvs("metarl/Navigation2D-v0")
    agent = PretrainedAgent(envs, PretrainedConfig(meta_batch_size=4, episodes_per_task=4, hidden=(32, 32)),
                            device="cuda")
    tasks = envs.sample_tasks(4, np.random.default_rng(0))
    metrics = agent.meta_train_step(tasks)
    assert all(np.isfinite(v) for v in metrics.values())
    result = agent.adapt_many(tasks, budget=2, seed=0, episodes_per_step=4)
    assert result.stage_returns.shape == (4, 3)
    assert next(agent.policy.parameters()).device.type == "cuda"


def test_cli_train_and_evaluate_on_cuda(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", "pretrained", "--out", str(run), "--device", "cuda", "--iterations", "2",
                 "--meta-batch-size", "2", "--episodes-per-task", "2", "--eval-tasks", "2",
                 "--adapt-episodes", "2", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--device", "cuda", "--tasks", "2", "--budget", "1", "--episodes", "2"]) == 0
