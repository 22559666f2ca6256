"""Learned optimizers for few-shot learning: Meta-SGD and the coordinate-wise LSTM optimizer.

**Meta-SGD** (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning",
arXiv:1707.09835). Besides the initialisation ``theta`` it learns a tensor ``alpha`` of the same shape,
the per-coordinate step size *and direction* of the inner update (eq. 1)::

    theta'_i = theta - alpha o grad_theta L_{T_i}(theta; D_i)          (o: elementwise product)

and ``(theta, alpha)`` minimise the query loss after that step, exactly as in MAML (eq. 2, algorithm 1),
with Adam. With ``alpha`` fixed to a constant ``a`` it *is* MAML with step size ``a`` (tested). The
paper initialises ``alpha`` uniformly in ``[0.005, 0.1]`` and adapts with one step.

**LSTM optimizer** (Andrychowicz et al. 2016, "Learning to learn by gradient descent by gradient
descent", NeurIPS). A two-layer LSTM ``m_phi`` with 20 hidden units, shared by all coordinates of the
learner's parameters and run on each coordinate separately, turns the gradient into the update
(eq. 1, sec. 2.1)::

    theta_{t+1} = theta_t + g_t,     [g_t, h_{t+1}] = m_phi(preprocess(grad_t), h_t)

with the gradient preprocessing of their appendix A (``p = 10``)::

    preprocess(x) = (log|x| / p, sign(x))   if |x| >= e^-p
                    (-1, e^p x)             otherwise

and the output multiplied by 0.1 (``output_scale``). The gradients fed to the LSTM are treated as
constants (the dashed edges of their figure 2: no second derivatives).

``variant="ravi"``: Ravi & Larochelle (2017, "Optimization as a Model for Few-Shot Learning", ICLR)
make the parameters the cell state of an LSTM whose gates are the learned forget and input rates
(eq. 2)::

    theta_t = f_t o theta_{t-1} - i_t o grad_t
    i_t = sigmoid(W_I [h_t, theta_{t-1}, i_{t-1}] + b_I),   f_t = sigmoid(W_F [h_t, theta_{t-1}, f_{t-1}] + b_F)

where ``h_t`` is the output of a first coordinate-wise LSTM (20 units) fed the preprocessed gradient
and the preprocessed loss (sec. 3.2, 3.3). ``b_F`` starts in ``[4, 6]`` and ``b_I`` in ``[-5, -4]`` (their
initialisation: forget gates near 1, small steps).

Few-shot use (as Ravi & Larochelle): the optimizer's parameters *and* the learner's initialisation
``theta_0`` are meta-learned together (``learn_init``); each task unrolls ``inner_steps`` updates on its
support set, and the meta-loss is the query loss after the last one, back-propagated through the
unroll (truncated at the task: one task = one unroll). Tasks of a meta-batch are unrolled together,
with parameters stacked along a task axis and the network run with ``torch.func.vmap``.

Choices where codebases differ, and ours:

- The LSTM optimizer's meta-loss is the final query loss (Ravi & Larochelle), not the sum of the
  losses along the trajectory (Andrychowicz et al.'s ``w_t = 1`` on the optimizee's own loss).
- Previous gates ``i_0, f_0`` of the Ravi & Larochelle cell start at 0; the meta-gradient is clipped
  to norm ``max_grad_norm`` (their code: 0.25).
- BatchNorm and query normalisation at test follow MAML's (``batch_norm`` policy of :mod:`metarl.supervised`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from metarl import functional as F
from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.supervised import (
    BATCHING,
    BN_POLICIES,
    AdaptedPredictor,
    FewShotResult,
    InnerSGD,
    Params,
    Problem,
    adaptation_result,
    adapted_model,
    build_backbone,
    check_vmap_safe,
    learner_state,
    outer_step,
    query_metric,
    query_score,
    resolve_batching,
    restore_learner_state,
    sgd_adaptation,
    task_losses,
)
from metarl.types import Episode

LSTM_VARIANTS = ("andrychowicz", "ravi")


# ==========================================================================================================
# Meta-SGD


@dataclass(frozen=True)
class MetaSGDConfig:
    backbone: str = option("auto", "network: conv4-stride, conv4-pool or mlp; auto = conv4-stride for images, "
                                   "mlp (2x40) for vectors")
    hidden: tuple[int, ...] = option((), "Conv-4 channels (default 64) or MLP hidden sizes (default 40 40)")
    meta_batch_size: int = option(32, "tasks per outer update (sinusoid: 25 as MAML)")
    inner_steps: int = option(1, "inner steps during meta-training (paper: 1)")
    eval_steps: int = option(1, "inner steps at test time (paper: 1)")
    alpha_low: float = option(0.005, "alpha is initialised uniformly in [alpha_low, alpha_high] (paper: 0.005)")
    alpha_high: float = option(0.1, "upper end of alpha's initialisation (paper: 0.1)")
    outer_lr: float = option(1e-3, "Adam learning rate of theta and alpha (paper: 1e-3)")
    first_order: bool = option(False, "treat the inner gradient as a constant (alpha still learns through it)")
    batch_norm: str = option("transductive", "queries at test: transductive or per-query (see metarl fewshot --help)")
    batching: str = option("auto", "tasks of a meta-batch: loop, vmap, or auto (vmap on CUDA and for MLPs)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size", "inner_steps")
        require_at_least(self, 0, "eval_steps")
        require(0 <= self.alpha_low <= self.alpha_high,
                f"need 0 <= alpha_low <= alpha_high, got {self.alpha_low} and {self.alpha_high}")
        require_positive(self, "outer_lr")
        require_choice(self, "batch_norm", BN_POLICIES)
        require_choice(self, "batching", BATCHING)


class MetaSGDLearner:
    """Meta-SGD on the shared learner interface: MAML's inner step with a learned ``alpha`` per coordinate."""

    def __init__(self, config: MetaSGDConfig, problem: Problem, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.problem, self.seed, self.device = config, problem, seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = build_backbone(config.backbone, problem, "conv4-stride", hidden=config.hidden).to(self.device)
        self.alpha = nn.ParameterList([nn.Parameter(torch.empty_like(p).uniform_(config.alpha_low, config.alpha_high))
                                       for p in self.net.parameters()])
        self.optimizer = torch.optim.Adam([*self.net.parameters(), *self.alpha], lr=config.outer_lr)
        self.batching = resolve_batching(config.batching, self.device, self.net)
        self.steps_done = 0

    def alphas(self) -> Params:
        """``alpha`` by parameter name."""
        return {name: a for (name, _), a in zip(self.net.named_parameters(), self.alpha, strict=True)}

    def meta_train_step(self, tasks: Sequence[Episode]) -> dict[str, float]:
        inner = InnerSGD(self.config.inner_steps, self.alphas(), second_order=not self.config.first_order)
        metrics = outer_step(self.net, self.optimizer, [t.to(self.device) for t in tasks], inner, self.batching,
                             self.problem.metric)
        self.steps_done += 1
        return {**metrics, "train/alpha_mean": float(torch.cat([a.detach().flatten() for a in self.alpha]).mean())}

    def _adapt(self, task: Episode, budget: int) -> tuple[list[float], AdaptedPredictor]:
        inner = InnerSGD(1, {k: v.detach() for k, v in self.alphas().items()}, second_order=False)
        return sgd_adaptation(self.net, dict(self.net.named_parameters()), task.to(self.device), inner, budget,
                              self.config.batch_norm, self.problem.kind)

    def adapt(self, task: Episode, budget: int | None = None) -> AdaptedPredictor:
        return self._adapt(task, self.config.eval_steps if budget is None else budget)[1]

    def adapt_many(self, tasks: Sequence[Episode], budget: int, seed: int = 0,
                   keep_adapted: bool = True) -> FewShotResult:
        return adaptation_result(self.problem.metric, tasks, lambda i, t: self._adapt(t, budget), keep_adapted)

    def state_dict(self) -> dict[str, Any]:
        return {**learner_state(self.net, self.optimizer, self.steps_done, self.seed),
                "alpha": [a.detach().clone() for a in self.alpha]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for a, saved in zip(self.alpha, state["alpha"], strict=True):
                a.copy_(saved)
        self.steps_done, self.seed = restore_learner_state(self.net, self.optimizer, state)

    def to(self, device: torch.device | str) -> MetaSGDLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        self.alpha.to(self.device)
        self.batching = resolve_batching(self.config.batching, self.device, self.net)
        return self


# ==========================================================================================================
# The coordinate-wise LSTM optimizer


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al.'s appendix A: ``[P] -> [P, 2]``, ``(log|x|/p, sign x)`` if ``|x| >= e^-p``, else
    ``(-1, e^p x)``: the scale of the input is separated from its sign."""
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(1e-38).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, x.sign(), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class AndrychowiczCell(nn.Module):
    """Two stacked LSTM cells and a linear output: ``(features [P, 2], state) -> (update [P], state)``."""

    def __init__(self, hidden: int = 20, layers: int = 2, output_scale: float = 0.1) -> None:
        super().__init__()
        self.cells = nn.ModuleList([nn.LSTMCell(2 if i == 0 else hidden, hidden) for i in range(layers)])
        self.out = nn.Linear(hidden, 1)
        self.hidden, self.output_scale = hidden, output_scale

    def initial_state(self, n: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [like.new_zeros(n, self.hidden) for _ in range(2 * len(self.cells))]

    def forward(self, grad: torch.Tensor, loss: torch.Tensor, theta: torch.Tensor, state: list[torch.Tensor],
                p: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``theta_{t+1} = theta_t + output_scale * out(h_t)`` per coordinate (``grad``, ``theta``: ``[P]``)."""
        x, new_state = preprocess(grad, p), []
        for i, cell in enumerate(self.cells):
            h, c = cell(x, (state[2 * i], state[2 * i + 1]))
            new_state += [h, c]
            x = h
        return theta + self.output_scale * self.out(x).squeeze(-1), new_state


class RaviLarochelleCell(nn.Module):
    """A coordinate-wise LSTM (gradient and loss in) followed by the parameter cell of Ravi & Larochelle:
    ``theta_t = f_t * theta_{t-1} - i_t * grad_t`` (module docstring)."""

    def __init__(self, hidden: int = 20) -> None:
        super().__init__()
        self.lstm = nn.LSTMCell(4, hidden)
        self.w_i = nn.Linear(hidden + 2, 1)
        self.w_f = nn.Linear(hidden + 2, 1)
        self.hidden = hidden
        with torch.no_grad():
            for w in (self.w_i.weight, self.w_f.weight):
                w.uniform_(-0.01, 0.01)
            self.w_f.bias.uniform_(4.0, 6.0)
            self.w_i.bias.uniform_(-5.0, -4.0)

    def initial_state(self, n: int, like: torch.Tensor) -> list[torch.Tensor]:
        return [like.new_zeros(n, self.hidden), like.new_zeros(n, self.hidden), like.new_zeros(n), like.new_zeros(n)]

    def forward(self, grad: torch.Tensor, loss: torch.Tensor, theta: torch.Tensor, state: list[torch.Tensor],
                p: float) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, c, i_prev, f_prev = state
        h, c = self.lstm(torch.cat([preprocess(grad, p), preprocess(loss, p)], dim=-1), (h, c))
        i = torch.sigmoid(self.w_i(torch.cat([h, theta[:, None], i_prev[:, None]], dim=-1))).squeeze(-1)
        f = torch.sigmoid(self.w_f(torch.cat([h, theta[:, None], f_prev[:, None]], dim=-1))).squeeze(-1)
        return f * theta - i * grad, [h, c, i, f]


@dataclass(frozen=True)
class LSTMOptimizerConfig:
    variant: str = option("andrychowicz", "andrychowicz (2-layer LSTM outputs the update) or ravi (LSTM gates "
                                          "are the forget and input rates, Ravi & Larochelle 2017)")
    backbone: str = option("auto", "learner network: conv4-stride, conv4-pool or mlp; auto = conv4-stride for "
                                   "images, mlp (2x40) for vectors")
    hidden: tuple[int, ...] = option((), "learner's Conv-4 channels (default 64) or MLP hidden sizes (default 40 40)")
    lstm_hidden: int = option(20, "hidden units of the coordinate-wise LSTM (both papers: 20)")
    lstm_layers: int = option(2, "LSTM layers of the andrychowicz variant (paper: 2)")
    output_scale: float = option(0.1, "andrychowicz: the LSTM output is multiplied by this (paper: 0.1)")
    preprocess_p: float = option(10.0, "p of the gradient preprocessing (paper: 10)")
    meta_batch_size: int = option(25, "tasks per outer update")
    inner_steps: int = option(5, "optimizer steps unrolled per task during meta-training")
    eval_steps: int = option(5, "optimizer steps at test time")
    outer_lr: float = option(1e-3, "Adam learning rate of the optimizer (and of theta_0)")
    learn_init: bool = option(True, "meta-learn the learner's initialisation theta_0 too (Ravi & Larochelle)")
    max_grad_norm: float = option(0.25, "clip the meta-gradient to this norm (Ravi & Larochelle: 0.25; 0 = off)")
    batch_norm: str = option("transductive", "queries at test: transductive or per-query")

    def __post_init__(self) -> None:
        require_choice(self, "variant", LSTM_VARIANTS)
        require_at_least(self, 1, "lstm_hidden", "lstm_layers", "meta_batch_size", "inner_steps")
        require_at_least(self, 0, "eval_steps")
        require_positive(self, "output_scale", "preprocess_p", "outer_lr")
        require(self.max_grad_norm >= 0, f"max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm}")
        require_choice(self, "batch_norm", BN_POLICIES)


def _flat(params: Params, b: int) -> torch.Tensor:
    """Stacked ``[B, ...]`` tensors -> ``[B * P]`` coordinates (task-major)."""
    return torch.cat([v.reshape(b, -1) for v in params.values()], dim=1).reshape(-1)


def _unflat(flat: torch.Tensor, like: Params, b: int) -> Params:
    out, start, rows = {}, 0, flat.reshape(b, -1)
    for k, v in like.items():
        n = v[0].numel()
        out[k] = rows[:, start:start + n].reshape(v.shape)
        start += n
    return out


class LSTMOptimizerLearner:
    """A learned coordinate-wise LSTM optimizer (and initialisation) on the shared learner interface."""

    def __init__(self, config: LSTMOptimizerConfig, problem: Problem, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.problem, self.seed, self.device = config, problem, seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = build_backbone(config.backbone, problem, "conv4-stride", hidden=config.hidden).to(self.device)
        check_vmap_safe(self.net)
        self.cell: AndrychowiczCell | RaviLarochelleCell = (
            AndrychowiczCell(config.lstm_hidden, config.lstm_layers, config.output_scale)
            if config.variant == "andrychowicz" else RaviLarochelleCell(config.lstm_hidden)).to(self.device)
        self.net.requires_grad_(config.learn_init)
        meta_params = [*self.cell.parameters(), *(self.net.parameters() if config.learn_init else [])]
        self.optimizer = torch.optim.Adam(meta_params, lr=config.outer_lr)
        self.steps_done = 0

    def unroll(self, theta0: Params, xs: torch.Tensor, ys: torch.Tensor, steps: int,
               on_step: Any = None) -> Params:
        """``steps`` optimizer updates of ``B`` tasks at once from ``theta0``; support ``xs [B, M, ...]``,
        ``ys [B, M, ...]``. Returns the stacked ``theta_steps [B, ...]``, differentiable with respect to the
        optimizer and ``theta0`` (the gradients themselves are constants). ``on_step(j, stacked)`` sees
        every iterate ``j = 1 .. steps``."""
        b = xs.shape[0]
        stacked = F.stack_params(theta0, b)
        state = self.cell.initial_state(b * sum(v[0].numel() for v in stacked.values()), xs)
        for j in range(steps):
            with torch.enable_grad():
                probe = {k: v.detach().requires_grad_(True) for k, v in stacked.items()}
                losses = task_losses(F.task_outputs(self.net, probe, xs), ys)
                grads = torch.autograd.grad(losses.sum(), list(probe.values()))
            n_coords = _flat(stacked, b).shape[0] // b
            grad = _flat(dict(zip(stacked, grads, strict=True)), b)
            loss = losses.detach().repeat_interleave(n_coords)
            theta, state = self.cell(grad, loss, _flat(stacked, b), state, self.config.preprocess_p)
            stacked = _unflat(theta, stacked, b)
            if on_step is not None:
                on_step(j + 1, stacked)
        return stacked

    def meta_train_step(self, tasks: Sequence[Episode]) -> dict[str, float]:
        c = self.config
        episodes = [t.to(self.device) for t in tasks]
        xs, ys = torch.stack([e.support_x for e in episodes]), torch.stack([e.support_y for e in episodes])
        qx, qy = torch.stack([e.query_x for e in episodes]), torch.stack([e.query_y for e in episodes])
        theta0: Params = dict(self.net.named_parameters())
        final = self.unroll(theta0, xs, ys, c.inner_steps)
        outputs = F.task_outputs(self.net, final, qx)
        losses = task_losses(outputs, qy)
        self.optimizer.zero_grad()
        losses.mean().backward()
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm if c.max_grad_norm else math.inf))
        self.optimizer.step()
        self.steps_done += 1
        metric = float(np.mean([query_metric(o, y) for o, y in zip(outputs.detach(), qy, strict=True)]))
        return {"train/query_loss": float(losses.detach().mean()), f"train/query_{self.problem.metric}": metric,
                "train/grad_norm": grad_norm}

    def _adapt(self, task: Episode, budget: int) -> tuple[list[float], AdaptedPredictor]:
        e = task.to(self.device)
        score = query_score(self.net, e, self.config.batch_norm)
        theta0 = {k: v.detach() for k, v in self.net.named_parameters()}
        curve = [score(theta0)]

        def record(j: int, stacked: Params) -> None:
            curve.append(score(F.select_task(stacked, 0)))

        with torch.no_grad():
            final = F.select_task(self.unroll(theta0, e.support_x[None], e.support_y[None], budget, record), 0)
        return curve, adapted_model(self.net, final, e.support_x, self.config.batch_norm, self.problem.kind)

    def adapt(self, task: Episode, budget: int | None = None) -> AdaptedPredictor:
        return self._adapt(task, self.config.eval_steps if budget is None else budget)[1]

    def adapt_many(self, tasks: Sequence[Episode], budget: int, seed: int = 0,
                   keep_adapted: bool = True) -> FewShotResult:
        return adaptation_result(self.problem.metric, tasks, lambda i, t: self._adapt(t, budget), keep_adapted)

    def state_dict(self) -> dict[str, Any]:
        return {**learner_state(self.net, self.optimizer, self.steps_done, self.seed), "cell": self.cell.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cell.load_state_dict(state["cell"])
        self.steps_done, self.seed = restore_learner_state(self.net, self.optimizer, state)

    def to(self, device: torch.device | str) -> LSTMOptimizerLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        self.cell.to(self.device)
        return self


__all__ = ["AndrychowiczCell", "LSTMOptimizerConfig", "LSTMOptimizerLearner", "MetaSGDConfig", "MetaSGDLearner",
           "RaviLarochelleCell", "preprocess"]
