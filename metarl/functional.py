"""Functional parameters: per-task parameter sets, batched forward passes, differentiable SGD.

Adaptation never mutates a module: an inner step maps a parameter dict to a new one,
``theta' = theta - alpha * grad L(theta)`` (Finn et al. 2017, eq. 1), keeping the graph when
``create_graph=True`` so a meta-gradient can flow through it (second order).

Tasks are batched by *stacking* parameters along a leading task axis ``[N, ...]`` and running the
policy with :func:`torch.func.vmap`. Because task ``n``'s loss depends only on slice ``n``, the
gradient of the summed loss with respect to the stacked parameters is exactly the stack of the
per-task gradients: one backward pass adapts every task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution
from torch.func import functional_call, vmap

Params = dict[str, torch.Tensor]


def stack_params(params: Params, n: int) -> Params:
    """Repeat every tensor along a new leading task axis: ``[...] -> [n, ...]`` (differentiable)."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


def select_task(stacked: Params, i: int) -> Params:
    return {k: v[i] for k, v in stacked.items()}


def task_outputs(module: nn.Module, stacked: Params, x: torch.Tensor) -> Any:
    """Forward each task's inputs through its own parameters.

    Args:
        stacked: parameters with a leading task axis ``[N, ...]``.
        x: inputs ``[N, ..., D]`` (task ``n``'s inputs use ``stacked[...][n]``).
    """
    return vmap(lambda p, xi: functional_call(module, p, (xi,)))(stacked, x)


def task_distribution(policy: nn.Module, stacked: Params, obs: torch.Tensor) -> Distribution:
    """The action distribution of every task's policy on its own observations ``[N, ..., D]``."""
    return policy.make_distribution(task_outputs(policy, stacked, obs))  # type: ignore[operator]


def sgd_step(params: Params, loss: torch.Tensor, lr: float | Params, create_graph: bool = False) -> Params:
    """One differentiable gradient step ``theta - lr * dL/dtheta`` on a parameter dict.

    ``lr`` is a float or a dict of per-parameter step sizes (Meta-SGD). With ``create_graph=True``
    the result stays a function of ``params`` through the gradient (second-order MAML); otherwise
    the gradient is treated as a constant (first-order).
    """
    names = list(params)
    grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph, allow_unused=True)
    out: Params = {}
    for k, g in zip(names, grads, strict=True):
        if g is None:
            out[k] = params[k]
            continue
        step = lr[k] if isinstance(lr, dict) else lr
        out[k] = params[k] - step * g
    return out
