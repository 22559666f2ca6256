"""PPO's losses as pure functions (Schulman et al. 2017, "Proximal Policy Optimization Algorithms").

Clipped surrogate (eq. 7), with the probability ratio ``r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t)``::

    L_clip(theta) = -E_t[ min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t) ]

and the value loss ``L_V = E_t[(V_theta(s_t) - R_t)^2]`` (optionally clipped around the rollout-time
values, as OpenAI baselines' ``ppo2`` and Stable-Baselines3's ``clip_range_vf``). Every function returns
named terms; the caller sums them with its coefficients (``L = L_clip + c_V L_V - c_H H``).

Expectations are over the real steps: with ``mask`` (``[T, B]``, 1 = real step, 0 = padding) a masked
mean, without it a plain ``mean`` over every element (the flat minibatches of the feed-forward learners).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class PolicyLossTerms(NamedTuple):
    """``loss``: the clipped surrogate loss (scalar, differentiable); the rest are detached diagnostics.

    ``clip_fraction``: share of steps whose ratio left ``[1 - eps, 1 + eps]``; ``approx_kl``: the
    estimator ``E[log pi_old - log pi_theta]`` of ``KL(pi_old || pi_theta)``.
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of ``x`` over the real steps (``mask == 1``; all of ``x`` when ``mask`` is ``None``)."""
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def clipped_surrogate_loss(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor,
                           clip: float, mask: torch.Tensor | None = None) -> PolicyLossTerms:
    """PPO's clipped surrogate loss ``-E[min(r A, clip(r, 1-eps, 1+eps) A)]``.

    Args:
        log_probs: ``[...]`` ``log pi_theta(a|s)`` (differentiable).
        old_log_probs: ``[...]`` ``log pi_old(a|s)`` of the behaviour policy (constants).
        advantages: ``[...]`` advantage estimates (constants).
        clip: the clipping range ``eps > 0``.
        mask: optional ``[...]`` 1 for real steps, 0 for padding.
    """
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    ratio = (log_probs - old_log_probs).exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    with torch.no_grad():
        clip_fraction = masked_mean(((ratio - 1).abs() > clip).float(), mask)
        approx_kl = masked_mean(old_log_probs - log_probs, mask)
    return PolicyLossTerms(-masked_mean(surrogate, mask), clip_fraction, approx_kl)


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None,
               old_values: torch.Tensor | None = None, clip: float | None = None) -> torch.Tensor:
    """``E[(V - R)^2]``; with ``old_values`` and ``clip``, ``E[max((V - R)^2, (V_clip - R)^2)]`` where
    ``V_clip = V_old + clip(V - V_old, -clip, clip)`` (baselines ``ppo2``).

    Args:
        values: ``[...]`` ``V_theta(s)`` (differentiable).
        returns: ``[...]`` regression targets ``R`` (constants), e.g. GAE advantages plus old values.
        mask: optional ``[...]`` real-step mask.
        old_values: ``[...]`` rollout-time values, needed with ``clip``.
        clip: value clipping range (> 0) or None.
    """
    err = (values - returns) ** 2
    if clip is not None:
        if old_values is None:
            raise ValueError("value clipping needs old_values (the rollout-time values)")
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.max(err, (clipped - returns) ** 2)
    return masked_mean(err, mask)


__all__ = ["PolicyLossTerms", "clipped_surrogate_loss", "masked_mean", "value_loss"]
