"""Policy-gradient pieces shared by the RL learners: per-task advantages and surrogate losses.

A rollout for ``N`` tasks with ``E`` episodes each is a :class:`~metarl.types.TrajectoryBatch`
with ``B = N * E`` columns, column ``b`` belonging to task ``b // E``. Per-task quantities reshape
``[T, N*E]`` to ``[N, T, E]`` (:func:`by_task`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from metarl import functional as F
from metarl.learner import AdaptationResult, AdaptedPolicy
from metarl.returns import discounted_returns, fit_linear_baseline, gae, normalize, predict_linear_baseline
from metarl.rollout import TaskEnvs, task_policy_act_fn
from metarl.types import Task, TrajectoryBatch


def by_task(x: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """``[T, N*E, ...] -> [N, T, E, ...]``."""
    t, b = x.shape[:2]
    if b % n_tasks:
        raise ValueError(f"batch of {b} columns does not split into {n_tasks} tasks")
    return x.reshape(t, n_tasks, b // n_tasks, *x.shape[2:]).transpose(0, 1)


def _real_steps_by_task(mask: torch.Tensor, n_tasks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each task's real steps are: ``flat [N, L]`` and ``valid [N, L]``.

    ``flat[n, j]`` indexes the ``T * B`` flattened ``[T, B]`` layout (``t * B + b``) at task ``n``'s
    ``j``-th real step (steps in ``(t, column)`` order); ``L`` is the largest count of real steps of a
    task, and entries past a task's own count have ``valid == False`` (and ``flat == 0``). Padding (and
    early-ending episodes, whose columns idle) never enters the compact list.
    """
    t_len, b = mask.shape
    e = b // n_tasks
    real = by_task(mask, n_tasks).reshape(n_tasks, t_len * e) > 0   # position p = t * E + e
    rank = real.cumsum(1) - 1
    counts = rank[:, -1] + 1
    width = max(int(counts.max()), 1)
    pos = torch.arange(t_len * e, device=mask.device).expand(n_tasks, -1)
    slot = torch.where(real, rank, width)                             # non-real positions: a dropped column
    local = torch.zeros(n_tasks, width + 1, dtype=torch.long, device=mask.device)
    local = local.scatter(1, slot, pos)[:, :width]                    # slots past a task's count stay 0
    valid = torch.arange(width, device=mask.device) < counts[:, None]
    column = torch.arange(n_tasks, device=mask.device)[:, None] * e + local % e
    return (local // e) * b + column, valid


def _scatter_real(x: torch.Tensor, flat: torch.Tensor, valid: torch.Tensor, t: int, b: int) -> torch.Tensor:
    """The compact per-task values ``x [N, L]`` laid back out as ``[T, B]`` (0 on padding)."""
    out = x.new_zeros(t * b + 1)  # the last slot takes the entries past each task's own count
    out = out.index_put((torch.where(valid, flat, t * b),), x)
    return out[:-1].reshape(t, b)


def task_advantages(batch: TrajectoryBatch, n_tasks: int, gamma: float, gae_lambda: float = 1.0,
                    normalize_advantages: bool = True) -> torch.Tensor:
    """Advantages ``[T, B]`` with the linear feature baseline refit on each task's own episodes.

    As in MAML-RL (Finn et al. 2017, following Duan et al. 2016): the baseline of task ``n`` is fit
    to the discounted returns of task ``n``'s episodes only, then ``A = GAE(lambda)`` with that
    baseline (``lambda = 1``: returns minus baseline), normalised per task over real steps.

    The fit, the baseline values and the normalisation run on each task's real steps gathered into a
    compact list (:func:`_real_steps_by_task`), not on the padded ``[T, B]`` layout: when episodes end
    early (CartPole, packed collection) most of that layout is padding. The result equals the same
    formulas on the padded layout (tests/test_policy_gradient.py).
    """
    end = batch.episode_end
    returns = discounted_returns(batch.rewards, end, gamma)
    t, b = batch.rewards.shape
    flat, valid = _real_steps_by_task(batch.mask, n_tasks)               # [N, L]
    steps = (flat // b).to(batch.obs.dtype)                               # one episode per column, from row 0
    obs = batch.obs.reshape(t * b, -1)[flat]                              # [N, L, D]
    # The compact list as a [N, T=L, B=1] layout with the step index given explicitly.
    w = fit_linear_baseline(obs[:, :, None], returns.reshape(-1)[flat][:, :, None], valid[:, :, None],
                            time_index=steps[:, :, None])                 # [N, F], one fit per task
    v = predict_linear_baseline(w, obs[:, :, None], valid[:, :, None], time_index=steps[:, :, None])[..., 0]
    values = _scatter_real(v, flat, valid, t, b)
    # V(s_{t+1}): the next step's value inside an episode; at an episode end the baseline at the true
    # final observation (time index t+1). gae() bootstraps from it only at truncations.
    next_values = torch.cat([values[1:], torch.zeros_like(values[:1])])
    te, be = ((batch.terminated | batch.truncated) & (batch.mask > 0)).nonzero(as_tuple=True)
    if len(te):
        final = predict_linear_baseline(w[be // (b // n_tasks)], batch.next_obs[te, be][:, None, None],
                                        torch.ones(len(te), 1, 1, dtype=values.dtype, device=values.device),
                                        time_offset=1, time_index=te.to(values.dtype)[:, None, None])
        next_values = next_values.index_put((te, be), final[:, 0, 0])
    adv = gae(batch.rewards, values, next_values, batch.terminated.float(), end, gamma, gae_lambda)
    adv = adv * batch.mask
    if normalize_advantages:
        compact = normalize(adv.reshape(-1)[flat], valid, dim=1)         # each task over its own real steps
        adv = _scatter_real(compact, flat, valid, t, b)
    return adv.detach()


def task_log_probs(policy: nn.Module, stacked: F.Params, batch: TrajectoryBatch, n_tasks: int) -> torch.Tensor:
    """``[T, B]`` log pi_{theta_n}(a_t | s_t) with each task's own parameters ``stacked[...][n]``."""
    obs = by_task(batch.obs, n_tasks)            # [N, T, E, D]
    actions = by_task(batch.actions, n_tasks)    # [N, T, E(, A)]
    dist = F.task_distribution(policy, stacked, obs)
    logp = dist.log_prob(actions)                # [N, T, E]
    return logp.transpose(0, 1).reshape(batch.rewards.shape)


def reinforce_loss(log_probs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   n_tasks: int) -> torch.Tensor:
    """``[N]`` per-task vanilla policy-gradient surrogate ``-mean_t log pi(a_t|s_t) A_t`` over real steps."""
    num = by_task(log_probs * advantages * mask, n_tasks).sum(dim=(1, 2))
    den = by_task(mask, n_tasks).sum(dim=(1, 2)).clamp(min=1.0)
    return -num / den


def adapt_step(policy: nn.Module, stacked: F.Params, batch: TrajectoryBatch, n_tasks: int, lr: float,
               gamma: float, create_graph: bool = False) -> F.Params:
    """One vanilla policy-gradient step for every task at once (the MAML inner step, Finn et al. eq. 1)."""
    adv = task_advantages(batch, n_tasks, gamma)
    losses = reinforce_loss(task_log_probs(policy, stacked, batch, n_tasks), adv, batch.mask, n_tasks)
    # Task n's loss depends only on stacked[...][n], so the gradient of the sum is the per-task gradient.
    return F.sgd_step(stacked, losses.sum(), lr, create_graph=create_graph)


def finetune_by_policy_gradient(policy: nn.Module, params: F.Params, envs: TaskEnvs, tasks: Sequence[Task],
                                budget: int, episodes_per_step: int, lrs: Sequence[float], gamma: float,
                                seed: int, device: torch.device | str = "cpu") -> AdaptationResult:
    """Adapt ``params`` to every task with ``budget`` vanilla policy-gradient steps, all tasks at once.

    Stage ``k`` samples ``episodes_per_step`` fresh episodes per task with the ``k``-step adapted
    parameters; their mean return is the curve's point ``k`` and (for ``k < budget``) they are the
    data of step ``k + 1`` (the MAML evaluation protocol). ``lrs[k]`` is the step size of step
    ``k + 1`` (the last value repeats).
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0 adaptation steps, got {budget}")
    n = len(tasks)
    stacked = {k: v.detach().unsqueeze(0).repeat(n, *([1] * v.dim())).requires_grad_(True)
               for k, v in params.items()}
    stage_returns = np.zeros((n, budget + 1))
    for k in range(budget + 1):
        batch = envs.collect(task_policy_act_fn(policy, stacked, n), tasks, episodes_per_step,
                             seed=seed + 7919 * k, device=device)
        stage_returns[:, k] = by_task(batch.episode_returns[None], n).mean(dim=(1, 2)).cpu().numpy()
        if k < budget:
            lr = lrs[min(k, len(lrs) - 1)]
            stacked = {name: v.detach().requires_grad_(True)
                       for name, v in adapt_step(policy, stacked, batch, n, lr, gamma).items()}
    adapted = [AdaptedPolicy(policy, {name: v[i].detach() for name, v in stacked.items()},
                             envs.observation_space, envs.action_space, stage_returns[i].tolist(), device)
               for i in range(n)]
    return AdaptationResult(stage_returns, adapted)
