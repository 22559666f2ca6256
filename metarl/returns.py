"""Returns, advantages and the linear feature baseline as pure torch functions.

Every sequence is **time-major**: ``[T, B]`` (or ``[T, *batch]``), step ``t`` in row ``t``. Inputs may
live on CPU or CUDA; the output keeps the device and the floating dtype of ``rewards`` (or ``obs``).

Episode boundaries (STYLE.md habit 2; Pardo et al. 2018, "Time Limits in Reinforcement Learning"):

- ``terminated[t]``: step ``t`` reached a true terminal state. Nothing is bootstrapped after it.
- ``episode_end[t]`` = terminated OR truncated: the episode stops at ``t``, so nothing flows back
  from step ``t + 1`` (which belongs to another episode, or is padding).
- A truncation (``episode_end and not terminated``: a time limit, the end of a trial) is *not* a
  terminal state, so the value of the true final observation, ``next_values[t] = V(s_{t+1})``, is
  bootstrapped. CleanRL's issues #198/#457 are what happens otherwise.

Padding: a :class:`~metarl.types.TrajectoryBatch` column holds one episode from step 0 followed by
padding. These functions know nothing about the mask; the caller guarantees that padded steps have
``rewards == 0`` and that the last real step has ``episode_end == 1`` (``TrajectoryBatch.episode_end``
also sets 1 on every padded step), so no padding value leaks into a real step, and multiplies the
results by the mask. A rollout cut off mid-episode (last row not an end) bootstraps from
``next_values[-1]`` when next values are given, exactly like a truncation.

Two equalities pin the definitions down (tests/test_returns.py): GAE with ``lam = 1`` plus the values
equals the bootstrapped discounted returns, and GAE with ``lam = 0`` is the TD error.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LinearFeatureBaseline",
    "discounted_returns",
    "fit_linear_baseline",
    "gae",
    "linear_baseline_features",
    "normalize",
    "predict_linear_baseline",
]


# --------------------------------------------------------------------------------------------------
# validation helpers


def _float(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
    return x if x.is_floating_point() else x.to(torch.get_default_dtype())


def _like(x: torch.Tensor | None, ref: torch.Tensor, name: str, ref_name: str = "rewards") -> torch.Tensor | None:
    """``x`` as a tensor of ``ref``'s dtype and shape (bool/int flags become 0/1 floats)."""
    if x is None:
        return None
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}; wrap it with torch.as_tensor")
    if x.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)} (time-major [T, B]), got {tuple(x.shape)}"
        )
    return x.to(ref.dtype)


def _check_unit(value: float, name: str) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _check_time_major(rewards: torch.Tensor) -> None:
    if rewards.dim() < 1 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be time-major [T, B] with T >= 1, got shape {tuple(rewards.shape)}")


def _check_terminated_implies_end(terminated: torch.Tensor, episode_end: torch.Tensor) -> None:
    if bool((terminated > episode_end).any()):
        raise ValueError(
            "terminated[t] = 1 where episode_end[t] = 0; episode_end must be terminated OR truncated "
            "(e.g. `terminated | truncated`)"
        )


# --------------------------------------------------------------------------------------------------
# returns and advantages


def discounted_returns(
    rewards: torch.Tensor,
    episode_end: torch.Tensor,
    gamma: float,
    terminated: torch.Tensor | None = None,
    next_values: torch.Tensor | None = None,
) -> torch.Tensor:
    """Discounted reward-to-go ``G`` ``[T, B]``, restarted at every episode end.

    ``G_t = r_t + gamma * (1 - end_t) * G_{t+1}``, except at a truncation (``end_t`` and not
    ``terminated_t``) when ``next_values`` is given: ``G_t = r_t + gamma * next_values_t``, the value of
    the true final observation. ``G_T`` (after the last row) is ``next_values[T-1]`` when given (a rollout
    cut mid-episode is bootstrapped like a truncation), else 0.

    Args:
        rewards: ``[T, B]`` float.
        episode_end: ``[T, B]`` bool or float, terminated OR truncated (1 on padding is fine).
        gamma: discount in [0, 1].
        terminated: ``[T, B]`` bool or float, or None: every end is terminal (no bootstrap at all
            except after the last row).
        next_values: ``[T, B]`` ``V(s_{t+1})`` of the true next observation, or None (no bootstrap).

    Returns:
        ``[T, B]`` returns, dtype and device of ``rewards``.
    """
    rewards = _float(rewards, "rewards")
    _check_time_major(rewards)
    gamma = _check_unit(gamma, "gamma")
    end = _like(episode_end, rewards, "episode_end")
    term = _like(terminated, rewards, "terminated")
    nv = _like(next_values, rewards, "next_values")
    assert end is not None
    bootstrap = torch.zeros_like(rewards)
    if nv is not None and term is not None:
        _check_terminated_implies_end(term, end)
        # torch.where, not a product: a NaN/inf value at a terminal state must not leak in.
        bootstrap = torch.where((end > 0) & (term <= 0), nv, bootstrap)
    carry = nv[-1] if nv is not None else torch.zeros_like(rewards[0])
    out = []
    for t in range(rewards.shape[0] - 1, -1, -1):
        carry = rewards[t] + gamma * ((1.0 - end[t]) * carry + bootstrap[t])
        out.append(carry)
    return torch.stack(out[::-1])


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    terminated: torch.Tensor,
    episode_end: torch.Tensor,
    gamma: float,
    lam: float,
) -> torch.Tensor:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16) ``[T, B]``.

    ``delta_t = r_t + gamma * (1 - terminated_t) * next_values_t - values_t`` and
    ``A_t = delta_t + gamma * lam * (1 - episode_end_t) * A_{t+1}``, ``A_T = 0``.

    Args:
        rewards: ``[T, B]`` float.
        values: ``[T, B]`` ``V(s_t)``.
        next_values: ``[T, B]`` ``V(s_{t+1})`` of the TRUE next observation: at a truncation the final
            observation of the episode (never the reset observation); ignored where ``terminated``.
        terminated: ``[T, B]`` bool or float, true terminal states (no bootstrap).
        episode_end: ``[T, B]`` bool or float, terminated OR truncated (1 on padding is fine); stops the
            advantage from flowing back across episodes.
        gamma: discount in [0, 1].
        lam: GAE lambda in [0, 1]; 1 gives ``G_t - V(s_t)``, 0 gives the TD error.

    Returns:
        ``[T, B]`` advantages, dtype and device of ``rewards``. Returns targets are ``A + values``.
    """
    rewards = _float(rewards, "rewards")
    _check_time_major(rewards)
    gamma = _check_unit(gamma, "gamma")
    lam = _check_unit(lam, "lam")
    v = _like(values, rewards, "values")
    nv = _like(next_values, rewards, "next_values")
    term = _like(terminated, rewards, "terminated")
    end = _like(episode_end, rewards, "episode_end")
    assert v is not None and nv is not None and term is not None and end is not None
    _check_terminated_implies_end(term, end)
    bootstrap = torch.where(term > 0, torch.zeros_like(nv), nv)
    delta = rewards + gamma * bootstrap - v
    decay = gamma * lam * (1.0 - end)
    carry = torch.zeros_like(rewards[0])
    out = []
    for t in range(rewards.shape[0] - 1, -1, -1):
        carry = delta[t] + decay[t] * carry
        out.append(carry)
    return torch.stack(out[::-1])


def normalize(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
    dim: int | tuple[int, ...] | None = None,
) -> torch.Tensor:
    """``(x - mean) / (std + eps)`` over the real (``mask > 0``) entries; masked entries become 0.

    The standard deviation is the population one (divide by n, as MAML-RL's ``weighted_normalize``),
    so a single real entry gives 0 rather than NaN.

    Args:
        x: any shape, e.g. ``[T, B]`` advantages.
        mask: same shape as ``x`` (bool or float), or None for all entries.
        eps: added to the standard deviation.
        dim: dimensions to reduce over (None: all), e.g. ``(1, 2)`` to normalise each task of a
            ``[N, T, E]`` tensor separately.
    """
    x = _float(x, "x")
    dims = tuple(range(x.dim())) if dim is None else dim
    if mask is None:
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        return (x - mean) / (var.sqrt() + eps)
    m = _like(mask, x, "mask", "x")
    assert m is not None
    real = m > 0
    xs = torch.where(real, x, torch.zeros_like(x))
    n = real.to(x.dtype).sum(dim=dims, keepdim=True).clamp(min=1.0)
    mean = xs.sum(dim=dims, keepdim=True) / n
    centred = torch.where(real, x - mean, torch.zeros_like(x))
    var = (centred**2).sum(dim=dims, keepdim=True) / n
    return centred / (var.sqrt() + eps)


# --------------------------------------------------------------------------------------------------
# linear feature baseline (Duan et al. 2016, "Benchmarking Deep RL for Continuous Control"; the
# baseline of rllab and MAML-RL, Finn et al. 2017)

_TIME_SCALE = 100.0  # rllab divides the in-episode step index by 100 before taking powers
_OBS_CLIP = 10.0
_RIDGE_TRIES = 5  # rllab: multiply the ridge coefficient by 10 up to 5 times until the fit is finite


def _time_index(mask: torch.Tensor, episode_end: torch.Tensor | None) -> torch.Tensor:
    """``[..., T, B]`` index of each real step within its episode (0, 1, ...).

    Without ``episode_end`` the index counts real steps from row 0 of each column (one episode per
    column, as in a TrajectoryBatch). With it, the count restarts after every end, so a column may
    hold several consecutive episodes.
    """
    count = torch.cumsum(mask, dim=-2)  # real steps up to and including t
    if episode_end is None:
        start = torch.zeros_like(count)
    else:
        at_end = torch.where(episode_end > 0, count, torch.zeros_like(count))
        prev = torch.cat([torch.zeros_like(at_end[..., :1, :]), at_end[..., :-1, :]], dim=-2)
        start = torch.cummax(prev, dim=-2).values  # count at the most recent end before t
    return (count - start - 1.0).clamp(min=0.0)


def linear_baseline_features(
    obs: torch.Tensor,
    mask: torch.Tensor,
    episode_end: torch.Tensor | None = None,
    time_offset: int = 0,
    time_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """rllab's features ``[..., T, B, F]``, ``F = 2 * D + 4``, zero on padded steps.

    Per real step: ``[clip(o, -10, 10), clip(o, -10, 10) ** 2, s, s ** 2, s ** 3, 1]`` with ``s = t / 100``
    and ``t`` the step index within the episode. (rllab squares the clipped observation.)

    Args:
        obs: ``[..., T, B, D]`` observations (leading dims, e.g. tasks ``N``, are batch dims).
        mask: ``[..., T, B]`` 1 for real steps, 0 for padding.
        episode_end: optional ``[..., T, B]``; restart ``t`` after each end (several episodes per column).
        time_offset: added to ``t``; 1 gives the features of ``next_obs`` (one step later in time).
        time_index: optional ``[..., T, B]`` step index ``t`` of every entry, used instead of counting it
            from ``mask`` / ``episode_end`` (for layouts that are not episodes laid down a column from
            row 0, e.g. the real steps of a batch gathered into a compact list).
    """
    obs = _float(obs, "obs")
    if obs.dim() < 3:
        raise ValueError(f"obs must be [..., T, B, D] (time-major, with a feature dim), got shape {tuple(obs.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.shape != obs.shape[:-1]:
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask must be a tensor of shape obs.shape[:-1] = {tuple(obs.shape[:-1])}, got {got}")
    m = mask.to(obs.dtype)
    if time_index is None:
        end = None if episode_end is None else _like(episode_end, m, "episode_end", "mask")
        steps = _time_index(m, end)
    else:
        given = _like(time_index, m, "time_index", "mask")
        assert given is not None
        steps = given
    s = ((steps + time_offset) / _TIME_SCALE).unsqueeze(-1)
    d = obs.shape[-1]
    o = obs.clamp(-_OBS_CLIP, _OBS_CLIP)
    feats = obs.new_empty((*obs.shape[:-1], 2 * d + 4))  # filled slice by slice: no concatenated copies
    feats[..., :d] = o
    feats[..., d : 2 * d] = o * o
    feats[..., 2 * d : 2 * d + 3] = torch.cat([s, s * s, s * s * s], dim=-1)
    feats[..., 2 * d + 3] = 1.0
    # masked_fill, not a product: padded observations may hold anything, NaN included.
    return feats.masked_fill((m <= 0).unsqueeze(-1), 0.0)


def fit_linear_baseline(
    obs: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    reg: float = 1e-5,
    episode_end: torch.Tensor | None = None,
    time_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Ridge regression of ``returns`` on the features: weights ``[..., F]``.

    Solves ``(X^T X + c I) w = X^T y`` over the real steps, in float64 for accuracy, starting from
    ``c = reg`` and multiplying ``c`` by 10 (at most 5 tries, as rllab) for any batch entry whose solution
    is not finite. Leading dims batch independent fits (e.g. ``obs [N, T, B, D]`` -> ``[N, F]``, one
    baseline per task as MAML-RL refits it); use them rather than ``torch.func.vmap`` (the retry is
    data-dependent control flow).

    Args:
        obs: ``[..., T, B, D]``.
        returns: ``[..., T, B]`` regression targets (e.g. :func:`discounted_returns`).
        mask: ``[..., T, B]``; padded steps do not enter the fit.
        reg: initial ridge coefficient (> 0).
        episode_end, time_index: optional, see :func:`linear_baseline_features`.

    Returns:
        ``[..., F]`` weights in the dtype of ``obs``.

    Raises:
        FloatingPointError: no finite solution after 5 tries (non-finite observations or returns).
    """
    if not (isinstance(reg, (int, float)) and math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a finite float > 0, got {reg!r}")
    feats = linear_baseline_features(obs, mask, episode_end, time_index=time_index)
    dtype = feats.dtype
    if not isinstance(returns, torch.Tensor) or returns.shape != mask.shape:
        got = tuple(returns.shape) if isinstance(returns, torch.Tensor) else type(returns).__name__
        raise ValueError(f"returns must be a tensor of the shape of mask {tuple(mask.shape)}, got {got}")
    x = feats.flatten(-3, -2).double()  # [..., T*B, F]
    y = torch.where(mask > 0, returns.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
    y = y.flatten(-2).unsqueeze(-1)  # [..., T*B, 1]
    xtx = x.transpose(-1, -2) @ x
    xty = x.transpose(-1, -2) @ y
    eye = torch.eye(xtx.shape[-1], dtype=x.dtype, device=x.device)
    coeff = torch.full(xtx.shape[:-2], float(reg), dtype=x.dtype, device=x.device)
    w = torch.full_like(xty, float("nan"))
    todo = torch.ones(xtx.shape[:-2], dtype=torch.bool, device=x.device)
    for _ in range(_RIDGE_TRIES):
        sol, info = torch.linalg.solve_ex(xtx + coeff[..., None, None] * eye, xty)
        ok = (info == 0) & torch.isfinite(sol).all(dim=(-2, -1))
        take = todo & ok
        w = torch.where(take[..., None, None], sol, w)
        todo = todo & ~ok
        if not bool(todo.any()):
            return w.squeeze(-1).to(dtype)
        coeff = torch.where(todo, coeff * 10.0, coeff)
    where = f" at batch index(es) {todo.nonzero().tolist()}" if todo.dim() else ""
    raise FloatingPointError(
        f"linear feature baseline: no finite least-squares solution{where} even with ridge coefficient "
        f"{reg * 10 ** (_RIDGE_TRIES - 1):g}; the observations or returns contain NaN/inf on real steps "
        "(check the env's observations and the rewards)"
    )


def predict_linear_baseline(
    weights: torch.Tensor,
    obs: torch.Tensor,
    mask: torch.Tensor,
    episode_end: torch.Tensor | None = None,
    time_offset: int = 0,
    time_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Baseline values ``[..., T, B]``, zero on padded steps.

    ``weights`` ``[F]`` or ``[..., F]`` (broadcast against the leading dims of ``obs [..., T, B, D]``).
    ``time_offset=1`` evaluates ``next_obs`` at its own time index (``t + 1``); ``time_index`` as in
    :func:`linear_baseline_features`.
    """
    feats = linear_baseline_features(obs, mask, episode_end, time_offset, time_index)
    if not isinstance(weights, torch.Tensor) or weights.shape[-1] != feats.shape[-1]:
        got = tuple(weights.shape) if isinstance(weights, torch.Tensor) else type(weights).__name__
        raise ValueError(
            f"weights must end in F = 2 * obs_dim + 4 = {feats.shape[-1]} features, got {got}; "
            "were they fit on observations of another size?"
        )
    w = weights.to(feats.dtype)[..., None, None, :]  # [..., 1, 1, F]
    return (feats * w).sum(-1)


class LinearFeatureBaseline:
    """Stateful wrapper of :func:`fit_linear_baseline` / :func:`predict_linear_baseline`.

    Example::

        baseline = LinearFeatureBaseline()
        baseline.fit(obs, returns, mask)          # obs [T, B, D], returns/mask [T, B]
        values = baseline.predict(obs, mask)      # [T, B], zero on padding
    """

    def __init__(self, reg_coeff: float = 1e-5) -> None:
        if not (isinstance(reg_coeff, (int, float)) and math.isfinite(reg_coeff) and reg_coeff > 0):
            raise ValueError(f"reg_coeff must be a finite float > 0, got {reg_coeff!r}")
        self.reg_coeff = float(reg_coeff)
        self.weights: torch.Tensor | None = None  # [..., F] after fit

    def features(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[T, B, F]`` (see :func:`linear_baseline_features`)."""
        return linear_baseline_features(obs, mask)

    def fit(self, obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> None:
        """Refit the weights on ``obs [T, B, D]``, ``returns [T, B]``, ``mask [T, B]``."""
        self.weights = fit_linear_baseline(obs, returns, mask, reg=self.reg_coeff)

    def predict(self, obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``[T, B]`` values, zero on padding."""
        if self.weights is None:
            raise RuntimeError("LinearFeatureBaseline.predict called before fit; call fit(obs, returns, mask) first")
        return predict_linear_baseline(self.weights, obs, mask)
