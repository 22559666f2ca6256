"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", arXiv:1803.02999;
reference code ``openai/supervised-reptile``).

For each task ``T_i`` of a meta-batch, start from ``theta`` and run ``k`` steps of an optimiser
(Adam with ``beta1 = 0``) on mini-batches of the task's training examples, giving ``phi_i``
(``U^k_{T_i}(theta)``). Then move the initialisation towards the adapted weights (algorithm 2, the
batched version)::

    theta <- theta + epsilon * 1/n sum_i (phi_i - theta)

No gradient flows through the inner loop: ``phi_i - theta`` *is* the update direction (to second order
it contains the MAML gradient plus a term that maximises the inner product of gradients of
different mini-batches, sec. 5). The outer step size ``epsilon`` is annealed linearly from
``meta_step`` to ``meta_step_final`` over ``meta_iterations``.

Omniglot setup of the paper (appendix A, ``run_omniglot.sh``, 5-way 1-shot): Conv-4 with stride-2
convolutions, flattened into the head; inner Adam with learning rate 1e-3, 5 steps on mini-batches
of 10 drawn from 10 "train shots" per class; meta-batch 5; ``epsilon`` 1.0 -> 0 over 100,000
iterations; at test 50 steps on mini-batches of 5 (the whole 1-shot support set).

Choices where codebases differ, and ours (following the reference code):

- The inner Adam's moment estimates and step count persist across tasks and iterations (the reference
  code's optimiser slots are not part of the weights it resets); adaptation at test starts from a copy
  of them and leaves them unchanged.
- Mini-batches are drawn without replacement, a fresh permutation of the examples each pass.
- BatchNorm normalises every batch with its own statistics (the reference code's ``training=True``);
  at test the ``batch_norm`` policy decides how queries are normalised: ``transductive`` (the
  reference code's ``--transductive``, the setting of the paper's Omniglot table) or ``per-query``
  (support set + one query, the reference code's non-transductive mode).
- Training episodes need no query set (``--train-queries 0``); if present it is ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.supervised import (
    BN_POLICIES,
    AdaptedPredictor,
    FewShotResult,
    Params,
    Problem,
    adaptation_result,
    adapted_model,
    build_backbone,
    detached,
    episode_loss,
    forward,
    gradient_curve,
    query_score,
)
from metarl.types import Episode


@dataclass(frozen=True)
class ReptileConfig:
    backbone: str = option("auto", "network: conv4-stride (paper), conv4-pool or mlp; auto = conv4-stride for "
                                   "images, mlp for vectors")
    hidden: tuple[int, ...] = option((), "Conv-4 channels (default 64) or MLP hidden sizes (default 40 40)")
    readout: str = option("flatten", "stride-2 Conv-4 features: flatten (reference code) or mean")
    meta_batch_size: int = option(5, "tasks per outer update (paper: 5)")
    inner_steps: int = option(5, "inner Adam steps per task during meta-training (paper: 5)")
    inner_batch: int = option(10, "examples per inner mini-batch during meta-training (paper: 10)")
    inner_lr: float = option(1e-3, "inner Adam learning rate (paper: 1e-3)")
    adam_beta2: float = option(0.999, "inner Adam beta2 (beta1 is 0, as in the paper)")
    meta_step: float = option(1.0, "outer step size epsilon at the start (paper: 1.0)")
    meta_step_final: float = option(0.0, "outer step size at the end of the linear annealing (paper: 0)")
    meta_iterations: int = option(0, "length of the annealing in iterations (paper: 100000); 0 = the run's "
                                     "--iterations under metarl fewshot (constant epsilon otherwise)")
    eval_steps: int = option(50, "inner Adam steps at test time (paper: 50)")
    eval_batch: int = option(5, "examples per mini-batch at test time (paper: 5, the 5-way 1-shot support set)")
    batch_norm: str = option("transductive", "queries at test: transductive (query-set statistics; the paper's "
                                             "Omniglot numbers) or per-query (support set + that query)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size", "inner_steps", "inner_batch", "eval_batch")
        require_at_least(self, 0, "eval_steps", "meta_iterations")
        require_positive(self, "inner_lr")
        require(0.0 <= self.adam_beta2 < 1.0, f"adam_beta2 must be in [0, 1), got {self.adam_beta2}")
        require(self.meta_step > 0 and self.meta_step_final >= 0,
                f"meta_step must be > 0 and meta_step_final >= 0, got {self.meta_step}, {self.meta_step_final}")
        require_choice(self, "batch_norm", BN_POLICIES)
        require_choice(self, "readout", ("flatten", "mean"))


# ----------------------------------------------------------------------------------------------------------
# The math.


def reptile_update(theta: Params, phis: Sequence[Params], epsilon: float) -> Params:
    """Algorithm 2: ``theta + epsilon * (mean_i phi_i - theta)``."""
    return {k: theta[k] + epsilon * (torch.stack([phi[k] for phi in phis]).mean(0) - theta[k]) for k in theta}


def annealed_step(iteration: int, total: int, start: float, final: float) -> float:
    """``epsilon`` of iteration ``iteration`` (0-based), linear from ``start`` to ``final`` over ``total``."""
    frac = min(iteration / total, 1.0) if total > 0 else 0.0
    return start + frac * (final - start)


@dataclass(frozen=True)
class AdamState:
    """Adam's first and second moment estimates (per parameter) and its step count."""

    m: Params
    v: Params
    t: int


def adam_step(params: Params, grads: Params, state: AdamState, lr: float, beta1: float, beta2: float,
              eps: float = 1e-8) -> tuple[Params, AdamState]:
    """One Adam step (Kingma & Ba 2015, algorithm 1) on a parameter dict, as a pure function."""
    t = state.t + 1
    m = {k: beta1 * state.m[k] + (1 - beta1) * grads[k] for k in params}
    v = {k: beta2 * state.v[k] + (1 - beta2) * grads[k].pow(2) for k in params}
    out = {k: params[k] - lr * (m[k] / (1 - beta1**t)) / ((v[k] / (1 - beta2**t)).sqrt() + eps) for k in params}
    return out, AdamState(m, v, t)


def minibatches(n: int, batch: int, steps: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """``steps`` index batches of size ``min(batch, n)`` drawn without replacement from ``range(n)``,
    reshuffling after each pass (the reference code's ``_mini_batches``)."""
    batch = min(batch, n)
    out: list[torch.Tensor] = []
    order = torch.randperm(n, generator=generator)
    pos = 0
    while len(out) < steps:
        if pos + batch > n:
            order, pos = torch.cat([order[pos:], torch.randperm(n, generator=generator)]), 0
        out.append(order[pos:pos + batch])
        pos += batch
    return out


# ----------------------------------------------------------------------------------------------------------


class ReptileLearner:
    """Reptile on the shared learner interface."""

    def __init__(self, config: ReptileConfig, problem: Problem, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.problem, self.seed, self.device = config, problem, seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = build_backbone(config.backbone, problem, "conv4-stride", hidden=config.hidden,
                                  readout=config.readout).to(self.device)
        zeros = {k: torch.zeros_like(v) for k, v in self.net.named_parameters()}
        self.adam = AdamState(zeros, {k: v.clone() for k, v in zeros.items()}, 0)
        self.steps_done = 0

    def _inner(self, theta: Params, e: Episode, batches: Sequence[torch.Tensor],
               state: AdamState) -> tuple[Params, AdamState]:
        """``phi = U^k(theta)``: one Adam step per index batch of the support set."""
        phi = theta
        for idx in batches:
            phi, state = self._inner_batch(phi, e, idx, state)
        return phi, state

    def meta_train_step(self, tasks: Sequence[Episode]) -> dict[str, float]:
        c = self.config
        theta = {k: v.detach() for k, v in self.net.named_parameters()}
        phis, losses = [], []
        for task in tasks:
            e = task.to(self.device)
            batches = minibatches(e.support_x.shape[0], c.inner_batch, c.inner_steps)
            phi, self.adam = self._inner(theta, e, batches, self.adam)
            with torch.no_grad():
                losses.append(float(episode_loss(forward(self.net, phi, e.support_x), e.support_y)))
            phis.append(phi)
        epsilon = annealed_step(self.steps_done, c.meta_iterations, c.meta_step, c.meta_step_final)
        new = reptile_update(theta, phis, epsilon)
        with torch.no_grad():
            for k, p in self.net.named_parameters():
                p.copy_(new[k])
        self.steps_done += 1
        return {"train/support_loss_after": float(np.mean(losses)), "train/meta_step": epsilon}

    def _adapt(self, task: Episode, budget: int, seed: int) -> tuple[list[float], AdaptedPredictor]:
        e, c = task.to(self.device), self.config
        batches = minibatches(e.support_x.shape[0], c.eval_batch, budget, torch.Generator().manual_seed(seed))
        state = self.adam

        def step(params: Params, j: int) -> Params:
            nonlocal state
            params, state = self._inner_batch(params, e, batches[j], state)
            return params

        with torch.enable_grad():
            curve, phi = gradient_curve(step, {k: v.detach() for k, v in self.net.named_parameters()}, budget,
                                        query_score(self.net, e, c.batch_norm))
        return curve, adapted_model(self.net, phi, e.support_x, c.batch_norm, self.problem.kind)

    def _inner_batch(self, params: Params, e: Episode, idx: torch.Tensor, state: AdamState) -> tuple[Params, AdamState]:
        phi = detached(params)
        loss = episode_loss(forward(self.net, phi, e.support_x[idx]), e.support_y[idx])
        grads = dict(zip(phi, torch.autograd.grad(loss, list(phi.values())), strict=True))
        new, state = adam_step(phi, grads, state, self.config.inner_lr, 0.0, self.config.adam_beta2)
        return {k: v.detach() for k, v in new.items()}, state

    def adapt(self, task: Episode, budget: int | None = None, seed: int = 0) -> AdaptedPredictor:
        """``budget`` Adam steps (default ``eval_steps``) on mini-batches of the support set."""
        return self._adapt(task, self.config.eval_steps if budget is None else budget, seed)[1]

    def adapt_many(self, tasks: Sequence[Episode], budget: int, seed: int = 0,
                   keep_adapted: bool = True) -> FewShotResult:
        return adaptation_result(self.problem.metric, tasks, lambda i, t: self._adapt(t, budget, seed + i),
                                 keep_adapted)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "adam_m": dict(self.adam.m), "adam_v": dict(self.adam.v),
                "adam_t": self.adam.t, "steps_done": self.steps_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.net.load_state_dict(state["net"])
        dev = self.device
        self.adam = AdamState({k: v.to(dev) for k, v in state["adam_m"].items()},
                              {k: v.to(dev) for k, v in state["adam_v"].items()}, int(state["adam_t"]))
        self.steps_done, self.seed = int(state["steps_done"]), int(state["seed"])

    def to(self, device: torch.device | str) -> ReptileLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        self.adam = AdamState({k: v.to(self.device) for k, v in self.adam.m.items()},
                              {k: v.to(self.device) for k, v in self.adam.v.items()}, self.adam.t)
        return self


__all__ = ["AdamState", "ReptileConfig", "ReptileLearner", "adam_step", "annealed_step", "minibatches",
           "reptile_update"]
