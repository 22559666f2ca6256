"""The few-shot learners run the same code on CUDA (skipped without a GPU; CI has none)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from metarl.cli import main
from metarl.nets import Conv4
from metarl.supervised import InnerSGD, meta_backward
from metarl.types import Episode

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def _episodes(device: str) -> list[Episode]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5)
    return [Episode(torch.rand(5, 1, 28, 28, generator=g, dtype=torch.float64), labels,
                    torch.rand(10, 1, 28, 28, generator=g, dtype=torch.float64), labels.repeat_interleave(2),
                    ways=5).to(device) for _ in range(3)]


def test_cuda_vmap_meta_gradient_equals_the_cpu_loop() -> None:
    torch.manual_seed(0)
    net = Conv4(1, 5, hidden=8, variant="stride").double()
    grads = {}
    for device, batching in (("cpu", "loop"), ("cuda", "vmap")):
        net.to(device)
        theta = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
        meta_backward(net, theta, _episodes(device), InnerSGD(2, 0.4, second_order=True), batching)
        grads[device] = {k: v.grad.cpu() for k, v in theta.items() if v.grad is not None}
    for k in grads["cpu"]:
        torch.testing.assert_close(grads["cuda"][k], grads["cpu"][k], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("learner", ["maml", "metasgd", "lstm-opt", "reptile"])
def test_fewshot_cli_on_cuda(learner: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["fewshot", learner, "--dataset", "sinusoid", "--shots", "5", "--meta-batch-size", "3",
                 "--iterations", "2", "--test-episodes", "4", "--device", "cuda", "--no-progress",
                 "--out", str(run)]) == 0
    assert json.loads((run / "fewshot_evaluation.json").read_text())["metric"] == "mse"
