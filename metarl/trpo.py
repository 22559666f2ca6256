"""Trust-region policy optimisation pieces (Schulman et al. 2015, "Trust Region Policy Optimization").

TRPO solves ``min_theta L(theta)`` subject to ``KL(theta_old, theta) <= delta`` approximately:

1. ``g = dL/dtheta`` and the curvature of the constraint, the Hessian ``H`` of the mean KL at
   ``theta_old`` (its Fisher information matrix), used only through products ``H v``
   (:func:`hessian_vector_product`, "Pearlmutter trick": differentiate ``(dKL/dtheta) . v``).
2. The natural direction ``s = -H^{-1} g`` by conjugate gradient (:func:`conjugate_gradient`),
   with ``H`` damped to ``H + lambda I`` so that CG stays well conditioned.
3. The largest step along ``s`` whose quadratic KL model equals ``delta``:
   ``beta = sqrt(2 delta / (s^T H s))``.
4. A backtracking line search ``theta_old + r^i beta s`` (``i = 0, 1, ...``) that accepts the first
   candidate which lowers ``L`` and keeps the *exact* KL below ``delta``; if none does, ``theta``
   is left unchanged (Schulman et al. 2015, appendix C).

Everything works on a list of tensors and a closure, so a learner can put anything between the
parameters and the loss, e.g. MAML-RL re-runs its inner adaptation from the candidate parameters
(Finn et al. 2017). The step is scale-invariant in ``g``: summing or averaging the loss over tasks
gives the same update.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

LossAndKL = Callable[[bool], tuple[torch.Tensor, torch.Tensor]]
"""``closure(need_graph) -> (loss, kl)``, both scalars, evaluated at the current parameter values.
With ``need_graph=False`` only the values are used (the closure may skip building second-order graphs)."""


def flat(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one vector ``[P]``."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten_like(vector: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a vector ``[P]`` into tensors shaped like ``like``."""
    out, i = [], 0
    for t in like:
        out.append(vector[i:i + t.numel()].view_as(t))
        i += t.numel()
    if i != vector.numel():
        raise ValueError(f"vector has {vector.numel()} entries but the tensors hold {i}")
    return out


def conjugate_gradient(mvp: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iters: int = 10,
                       residual_tol: float = 1e-10) -> torch.Tensor:
    """Approximate solution ``x`` of ``A x = b`` for a symmetric positive-definite ``A`` given as ``mvp(v) = A v``.

    ``iters`` steps of conjugate gradient from ``x = 0`` (exact after ``dim(b)`` steps in exact
    arithmetic); stops early when the squared residual falls below ``residual_tol``.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        ap = mvp(p)
        alpha = rr / (p @ ap)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def hessian_vector_product(kl: torch.Tensor, params: Sequence[torch.Tensor],
                           damping: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> (d^2 kl / d params^2) v + damping * v`` (vectors ``[P]``), reusing one graph of ``dkl/dparams``.

    ``kl`` must have been computed with a graph that allows second derivatives (all of autograd's
    ops do, unless something was computed with ``create_graph=False`` on purpose).
    """
    grads = torch.autograd.grad(kl, list(params), create_graph=True)
    flat_grad = flat(grads)

    def hvp(v: torch.Tensor) -> torch.Tensor:
        hv = torch.autograd.grad(flat_grad @ v, list(params), retain_graph=True)
        return flat(hv) + damping * v

    return hvp


def _damped(product: Callable[[torch.Tensor], torch.Tensor], damping: float) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda v: product(v) + damping * v


@dataclass(frozen=True)
class TRPOStepInfo:
    """What one TRPO update did.

    ``line_search_steps``: candidates evaluated (1 = the full step was accepted); equal to the
    maximum with ``accepted=False`` when every candidate was rejected and the parameters kept.
    """

    loss_before: float
    loss_after: float
    kl: float
    line_search_steps: int
    accepted: bool
    expected_improvement: float
    step_norm: float

    def metrics(self) -> dict[str, float]:
        """The training log's view of the step (``train/...`` keys)."""
        return {"train/surrogate_before": self.loss_before, "train/surrogate_after": self.loss_after,
                "train/kl": self.kl, "train/line_search_steps": float(self.line_search_steps),
                "train/step_accepted": float(self.accepted), "train/expected_improvement": self.expected_improvement}


def trpo_step(params: Sequence[torch.Tensor], loss_and_kl: LossAndKL, max_kl: float = 0.01, cg_iters: int = 10,
              damping: float = 0.1, backtrack_ratio: float = 0.8, max_backtracks: int = 15,
              curvature: Callable[[], Callable[[torch.Tensor], torch.Tensor]] | None = None) -> TRPOStepInfo:
    """One TRPO update of ``params`` (leaf tensors, changed in place) minimising the closure's loss.

    The closure is called once with ``need_graph=True`` at the current parameters (its KL is 0
    there, but not its Hessian), then once per line-search candidate with ``need_graph=False``.
    ``curvature``, if given, is called once at the current parameters and returns ``v -> H v`` for the
    KL's Hessian ``H`` there (a learner that knows a cheaper exact form, e.g. MAML-RL's ``J^T F J``);
    by default ``H v`` is autograd's double backward of the closure's KL.
    """
    if max_kl <= 0 or not 0 < backtrack_ratio < 1 or max_backtracks < 1 or damping < 0:
        raise ValueError(f"need max_kl > 0, 0 < backtrack_ratio < 1, max_backtracks >= 1, damping >= 0; got "
                         f"{max_kl}, {backtrack_ratio}, {max_backtracks}, {damping}")
    params = list(params)
    loss, kl = loss_and_kl(True)
    g = flat(torch.autograd.grad(loss, params, retain_graph=curvature is None))
    if not torch.isfinite(g).all():
        raise FloatingPointError(f"TRPO: the loss gradient is not finite (|g| = {g.norm().item()}); check the loss and "
                                 "the model for NaN or inf")
    product = hessian_vector_product(kl, params) if curvature is None else curvature()
    hvp = _damped(product, damping)
    step = conjugate_gradient(hvp, -g, cg_iters)
    shs = step @ hvp(step)  # s^T (H + damping I) s, > 0 for damping > 0
    if not torch.isfinite(shs):
        raise FloatingPointError(f"TRPO: the KL curvature is not finite (s^T H s = {shs.item()}); the policy's second "
                                 "derivatives are NaN or inf somewhere (check the loss and the model for operations "
                                 "without a finite second derivative)")
    if shs <= 0:
        return TRPOStepInfo(loss.item(), loss.item(), 0.0, 0, False, 0.0, 0.0)
    full_step = step * torch.sqrt(2.0 * max_kl / shs)
    expected = -(g @ full_step).item()  # first-order predicted decrease of the loss
    old = [p.detach().clone() for p in params]
    loss_before = loss.item()
    del loss, kl, hvp, product  # free the second-order graphs before the line search
    deltas = unflatten_like(full_step.detach(), old)
    for i in range(max_backtracks):
        fraction = backtrack_ratio ** i
        with torch.no_grad():
            for p, p0, d in zip(params, old, deltas, strict=True):
                p.copy_(p0 + fraction * d)
        new_loss, new_kl = loss_and_kl(False)
        if new_loss.item() < loss_before and new_kl.item() <= max_kl:
            return TRPOStepInfo(loss_before, new_loss.item(), new_kl.item(), i + 1, True, expected * fraction,
                                fraction * full_step.norm().item())
    with torch.no_grad():
        for p, p0 in zip(params, old, strict=True):
            p.copy_(p0)
    return TRPOStepInfo(loss_before, loss_before, 0.0, max_backtracks, False, expected, 0.0)
