"""What the supervised few-shot learners share: the problem, losses and metrics, the functional inner
loop (per task, or all tasks at once with ``torch.func.vmap``), prediction under an explicit
BatchNorm policy, and the adapted predictor the learners' ``adapt`` returns.

Inner loop (Finn et al. 2017, eq. 1), on functional parameters (the module is never mutated)::

    phi_0 = theta,   phi_{j+1} = phi_j - alpha * grad_phi L(f_{phi_j}(X_support), Y_support)

``alpha`` is one step size (MAML) or a tensor per parameter (Meta-SGD's ``alpha``, elementwise);
``adapt`` restricts the adapted parameters (ANIL: the head), the others stay ``theta``. With
``second_order=True`` the gradient keeps its graph, so the meta-gradient of the query loss flows
through ``d phi / d theta = I - alpha H``; otherwise the inner gradients are constants (FOMAML).

Batching tasks. ``batching="loop"`` adapts the tasks one by one and back-propagates each task's
query loss as soon as it is computed (one task's graph in memory at a time). ``batching="vmap"``
stacks the parameters along a task axis and runs every task's forward pass in one
``torch.func.vmap`` call; because task ``i``'s loss depends only on slice ``i``, one backward pass of
the summed loss gives every task's inner gradient. The two agree to float64 round-off (tested).
``vmap`` refuses modules with ``nn.BatchNorm*`` layers: its batching rule for BatchNorm's backward
gives a wrong second-order meta-gradient (pytorch/functorch#534; SPEED.md measured 0.7% error); the
Conv-4 of :mod:`metarl.nets` with ``norm="batch"`` normalises in plain ops and is exact. On 2 CPU
cores ``vmap`` is slower than the loop (SPEED.md), so ``"auto"`` picks the loop on CPU and vmap on CUDA.

BatchNorm policy at prediction (reported with every number):

- ``"transductive"``: the query set is normalised with its own batch statistics (MAML's reference
  code, and the setting of Reptile's "transductive" numbers): predictions of one query depend on the
  other queries, and on how many there are: test with as many queries per class as in meta-training
  (a MAML 5-way 1-shot model meta-trained with 1 query per class lost ~2.5 points when tested with 15).
- ``"per-query"``: each query is forwarded in a batch made of the support set plus that query alone
  (Nichol et al. 2018's non-transductive evaluation): no query influences another.

Models without batch statistics (the sinusoid MLP) predict the same under both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF
from torch import nn
from torch.func import functional_call

from metarl import functional as F
from metarl.nets import BatchStatNorm2d, make_backbone
from metarl.types import Episode

Params = F.Params
KINDS = ("classification", "regression")
BN_POLICIES = ("transductive", "per-query")
BATCHING = ("auto", "loop", "vmap")


@dataclass(frozen=True)
class Problem:
    """What a learner is built for: ``kind``, one input's shape (``[C, H, W]`` or ``[D]``), ``n_outputs``
    (the ways of a classifier head, or the regression output size)."""

    kind: str
    input_shape: tuple[int, ...]
    n_outputs: int

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"problem kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_outputs < 1:
            raise ValueError(f"n_outputs must be >= 1, got {self.n_outputs}")

    @property
    def metric(self) -> str:
        """The query metric: ``accuracy`` (percent correct) or ``mse``."""
        return "accuracy" if self.kind == "classification" else "mse"


def build_backbone(name: str, problem: Problem, image_default: str, n_out: int | None = None,
                   hidden: Sequence[int] = (), norm: str = "batch", readout: str = "mean") -> nn.Module:
    """``make_backbone`` with ``name="auto"`` resolved: ``mlp`` for vectors, ``image_default`` for images."""
    if name == "auto":
        name = "mlp" if len(problem.input_shape) == 1 else image_default
    return make_backbone(name, problem.input_shape, problem.n_outputs if n_out is None else n_out, hidden, norm,
                         readout)


# ------------------------------------------------------------------------------------------------------
# losses and metrics


def episode_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Scalar loss: cross-entropy of logits ``[M, N]`` against labels ``[M]`` (long), or the MSE of
    outputs ``[M, D]`` against targets ``[M, D]`` (float)."""
    if targets.dtype == torch.long:
        return TF.cross_entropy(outputs, targets)
    return TF.mse_loss(outputs, targets)


def task_losses(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``[B]``: :func:`episode_loss` of each task of ``outputs [B, M, ...]``, ``targets [B, M, ...]``."""
    if targets.dtype == torch.long:
        b, m, n = outputs.shape
        return TF.cross_entropy(outputs.reshape(b * m, n), targets.reshape(b * m), reduction="none").view(b, m).mean(1)
    return (outputs - targets).pow(2).flatten(1).mean(1)


def query_metric(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Accuracy in percent of logits ``[M, N]`` on labels ``[M]``, or the MSE of ``[M, D]`` outputs."""
    if targets.dtype == torch.long:
        return float((outputs.argmax(-1) == targets).double().mean()) * 100.0
    return float((outputs - targets).pow(2).mean())


# ------------------------------------------------------------------------------------------------------
# the functional inner loop


@dataclass(frozen=True)
class InnerSGD:
    """``steps`` gradient steps of size ``lr`` (a float, or one tensor per adapted parameter: Meta-SGD) on
    the parameters named in ``adapt`` (``None``: all), keeping the graph when ``second_order``."""

    steps: int
    lr: float | Params
    second_order: bool
    adapt: tuple[str, ...] | None = None


def forward(module: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    return functional_call(module, params, (x,))


def _fast(params: Params, inner: InnerSGD) -> tuple[Params, Params, float | Params]:
    names = list(params) if inner.adapt is None else list(inner.adapt)
    fast = {k: params[k] for k in names}
    slow = {k: v for k, v in params.items() if k not in fast}
    lr = inner.lr if not isinstance(inner.lr, dict) else {k: inner.lr[k] for k in names}
    return fast, slow, lr


def adapt_task(module: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, inner: InnerSGD,
               steps: int | None = None) -> Params:
    """``phi_steps`` of one task from its support set ``x [M, ...]``, ``y [M, ...]`` (module docstring)."""
    fast, slow, lr = _fast(params, inner)
    for _ in range(inner.steps if steps is None else steps):
        loss = episode_loss(forward(module, {**slow, **fast}, x), y)
        fast = F.sgd_step(fast, loss, lr, create_graph=inner.second_order)
    return {**slow, **fast}


def adapt_tasks(module: nn.Module, stacked: Params, xs: torch.Tensor, ys: torch.Tensor, inner: InnerSGD) -> Params:
    """:func:`adapt_task` of ``B`` tasks at once: stacked parameters ``[B, ...]``, inputs ``xs [B, M, ...]``,
    targets ``ys [B, M, ...]``; one vmapped forward and one backward pass per step."""
    fast, slow, lr = _fast(stacked, inner)
    for _ in range(inner.steps):
        losses = task_losses(F.task_outputs(module, {**slow, **fast}, xs), ys)
        fast = F.sgd_step(fast, losses.sum(), lr, create_graph=inner.second_order)
    return {**slow, **fast}


def head_parameter_names(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of the module's last layer that has any (Conv-4's ``head``, an MLP's last
    ``Linear``): what ANIL adapts."""
    owners = [name for name, m in module.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError(f"{type(module).__name__} has no parameters")
    last = owners[-1]
    return tuple(f"{last}.{n}" if last else n for n, _ in module.get_submodule(last).named_parameters(recurse=False))


def check_vmap_safe(module: nn.Module) -> None:
    """Refuse ``nn.BatchNorm*`` under vmap (module docstring: wrong second-order meta-gradient)."""
    bad = [name for name, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bad:
        raise ValueError(f"batching='vmap' cannot run through nn.BatchNorm layers ({', '.join(bad)}): vmap's batching "
                         "rule for BatchNorm gives a wrong second-order meta-gradient (pytorch/functorch#534). Use "
                         "batching='loop', or a backbone with norm='batch' (metarl.nets.BatchStatNorm2d)")


def resolve_batching(batching: str, device: torch.device, module: nn.Module) -> str:
    """``auto``: vmap on CUDA and for networks without convolutions (the sinusoid MLP: 6x faster than the
    loop on CPU); the loop for CNNs on CPU (SPEED.md: vmap does not pay there with 15 queries per class)."""
    if batching not in BATCHING:
        raise ValueError(f"batching must be one of {BATCHING}, got {batching!r}")
    if batching == "auto":
        convolutional = any(isinstance(m, nn.Conv2d) for m in module.modules())
        return "vmap" if device.type == "cuda" or not convolutional else "loop"
    return batching


@dataclass(frozen=True)
class MetaBatchStats:
    """Per-task numbers of one meta-batch: post-adaptation query loss and query metric."""

    query_losses: list[float]
    query_metrics: list[float]


def meta_backward(module: nn.Module, params: Params, episodes: Sequence[Episode], inner: InnerSGD,
                  batching: str = "loop") -> MetaBatchStats:
    """Accumulate ``d/d theta [1/B sum_i L(f_{phi_i(theta)}(X^q_i), Y^q_i)]`` into the ``.grad`` of the
    leaf tensors behind ``params`` (and behind ``inner.lr`` when it is learned: Meta-SGD).

    ``batching``: ``"loop"`` (one task's graph at a time) or ``"vmap"`` (all tasks in one graph).
    """
    b = len(episodes)
    if batching == "vmap":
        check_vmap_safe(module)
        xs, ys = torch.stack([e.support_x for e in episodes]), torch.stack([e.support_y for e in episodes])
        qx, qy = torch.stack([e.query_x for e in episodes]), torch.stack([e.query_y for e in episodes])
        adapted = adapt_tasks(module, F.stack_params(params, b), xs, ys, inner)
        outputs = F.task_outputs(module, adapted, qx)
        losses = task_losses(outputs, qy)
        losses.mean().backward()
        return MetaBatchStats(losses.detach().tolist(), [query_metric(o, y) for o, y in zip(outputs.detach(), qy,
                                                                                          strict=True)])
    if batching != "loop":
        raise ValueError(f"batching must be 'loop' or 'vmap' here, got {batching!r}")
    out = MetaBatchStats([], [])
    for e in episodes:
        phi = adapt_task(module, params, e.support_x, e.support_y, inner)
        outputs = forward(module, phi, e.query_x)
        loss = episode_loss(outputs, e.query_y)
        (loss / b).backward()
        out.query_losses.append(loss.item())
        out.query_metrics.append(query_metric(outputs.detach(), e.query_y))
    return out


def outer_step(module: nn.Module, optimizer: torch.optim.Optimizer, episodes: Sequence[Episode], inner: InnerSGD,
               batching: str, metric: str) -> dict[str, float]:
    """One outer update of a MAML-style learner (Finn et al. eq. 4, with ``optimizer``): the meta-gradient of
    the mean post-adaptation query loss, then a step; returns ``train/query_loss`` and ``train/query_<metric>``."""
    optimizer.zero_grad()
    stats = meta_backward(module, dict(module.named_parameters()), episodes, inner, batching)
    optimizer.step()
    return {"train/query_loss": float(np.mean(stats.query_losses)),
            f"train/query_{metric}": float(np.mean(stats.query_metrics))}


def learner_state(net: nn.Module, optimizer: torch.optim.Optimizer, steps_done: int, seed: int) -> dict[str, Any]:
    """The checkpoint state every supervised learner shares (weights-only values)."""
    return {"net": net.state_dict(), "optimizer": optimizer.state_dict(), "steps_done": steps_done, "seed": seed}


def restore_learner_state(net: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> tuple[int, int]:
    """Load :func:`learner_state` into ``net`` and ``optimizer``; returns ``(steps_done, seed)``."""
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["steps_done"]), int(state["seed"])


def detached(params: Params) -> Params:
    """Leaf copies that require grad: the start of a test-time adaptation (no meta-graph)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


# ------------------------------------------------------------------------------------------------------
# prediction and the adapted predictor


def has_batch_statistics(module: nn.Module) -> bool:
    return any(isinstance(m, (BatchStatNorm2d, nn.modules.batchnorm._BatchNorm)) for m in module.modules())


def predict(module: nn.Module, params: Params, x: torch.Tensor, support_x: torch.Tensor, bn: str,
            chunk: int = 32) -> torch.Tensor:
    """Outputs ``[M, ...]`` for inputs ``x [M, ...]`` under BatchNorm policy ``bn`` (module docstring).

    ``per-query`` forwards ``M`` batches of ``support + 1`` inputs, ``chunk`` queries per vmapped call.
    """
    if bn not in BN_POLICIES:
        raise ValueError(f"batch-norm policy must be one of {BN_POLICIES}, got {bn!r}")
    if bn == "transductive" or not has_batch_statistics(module) or x.shape[0] == 0:
        return forward(module, params, x)
    outs = []
    for start in range(0, x.shape[0], chunk):
        q = x[start:start + chunk]
        batches = torch.cat([support_x.unsqueeze(0).expand(q.shape[0], *support_x.shape), q.unsqueeze(1)], dim=1)
        outs.append(torch.func.vmap(lambda xb: forward(module, params, xb)[-1])(batches))
    return torch.cat(outs)


class AdaptedPredictor:
    """A learner adapted to one episode's support set: ``predict(x)`` gives logits ``[M, N]`` (classification)
    or outputs ``[M, D]`` (regression) for new inputs ``x [M, ...]``; ``classify(x)`` the labels ``[M]``."""

    def __init__(self, predict_fn: Callable[[torch.Tensor], torch.Tensor], kind: str) -> None:
        self._predict_fn, self.kind = predict_fn, kind

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._predict_fn(x)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind != "classification":
            raise ValueError("classify() is for classification episodes; use predict() for regression")
        return self.predict(x).argmax(-1)


def adapted_model(module: nn.Module, params: Params, support_x: torch.Tensor, bn: str, kind: str) -> AdaptedPredictor:
    """The predictor of a module with adapted parameters (``params`` are detached first)."""
    frozen = {k: v.detach() for k, v in params.items()}
    return AdaptedPredictor(lambda x: predict(module, frozen, x, support_x, bn), kind)


@dataclass(frozen=True)
class FewShotResult:
    """Adaptation to many episodes. ``stage_values``: ``[n_episodes, n_stages]`` query ``metric`` (accuracy in
    percent, or MSE) after 0, 1, ... adaptation steps (one stage for learners without steps: ProtoNet).
    ``adapted``: one predictor per episode (empty when not kept)."""

    metric: str
    stage_values: np.ndarray
    adapted: list[AdaptedPredictor]


def gradient_curve(step: Callable[[Params, int], Params], params: Params, steps: int,
                   score: Callable[[Params], float]) -> tuple[list[float], Params]:
    """``[score(phi_0), ..., score(phi_steps)]`` and ``phi_steps`` for ``phi_{j+1} = step(phi_j, j)``."""
    values = [score(params)]
    for j in range(steps):
        params = step(params, j)
        values.append(score(params))
    return values, params


def adaptation_result(metric: str, tasks: Sequence[Episode],
                      adapt_one: Callable[[int, Episode], tuple[list[float], AdaptedPredictor]],
                      keep_adapted: bool = True) -> FewShotResult:
    """``adapt_many`` of a learner from ``adapt_one(i, episode) -> (stage values, predictor)``."""
    values, adapted = [], []
    for i, task in enumerate(tasks):
        curve, predictor = adapt_one(i, task)
        values.append(curve)
        if keep_adapted:
            adapted.append(predictor)
    return FewShotResult(metric, np.asarray(values, dtype=np.float64), adapted)


def sgd_adaptation(module: nn.Module, params: Params, episode: Episode, inner: InnerSGD, budget: int, bn: str,
                   kind: str) -> tuple[list[float], AdaptedPredictor]:
    """Test-time adaptation by ``budget`` steps of ``inner`` on the support set, from a detached copy of
    ``params``: the query metric after 0 .. ``budget`` steps and the predictor after the last step."""
    def step(phi: Params, j: int) -> Params:
        return adapt_task(module, phi, episode.support_x, episode.support_y, inner, steps=1)

    with torch.enable_grad():
        curve, phi = gradient_curve(step, detached(params), budget, query_score(module, episode, bn))
    return curve, adapted_model(module, phi, episode.support_x, bn, kind)


def query_score(module: nn.Module, episode: Episode, bn: str) -> Callable[[Params], float]:
    """``params -> query metric`` of an episode under BatchNorm policy ``bn`` (no graph kept)."""
    def score(params: Params) -> float:
        with torch.no_grad():
            frozen = {k: v.detach() for k, v in params.items()}
            return query_metric(predict(module, frozen, episode.query_x, episode.support_x, bn), episode.query_y)
    return score


__all__ = ["AdaptedPredictor", "BATCHING", "BN_POLICIES", "FewShotResult", "InnerSGD", "MetaBatchStats", "Problem",
           "adapt_task", "adapt_tasks", "adaptation_result", "adapted_model", "build_backbone", "check_vmap_safe",
           "detached", "episode_loss", "forward", "gradient_curve", "has_batch_statistics", "head_parameter_names",
           "learner_state", "meta_backward", "outer_step", "predict", "query_metric", "query_score", "resolve_batching",
           "restore_learner_state", "sgd_adaptation", "task_losses"]
