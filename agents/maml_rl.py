"""MAML-RL: model-agnostic meta-learning with policy-gradient adaptation (Finn et al. 2017, sec. 3.2 and 5.3).

Finn, Abbeel, Levine (2017), "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks",
ICML; reference code ``cbfinn/maml_rl`` (``maml_examples/maml_trpo_point.py``, ``test_maml_point.py``).

Objective. For a task ``T_i`` with trajectories ``D_i`` sampled by ``pi_theta`` and the vanilla
policy-gradient loss ``L_i(phi; D) = -1/|D| sum_{(s,a) in D} log pi_phi(a|s) A_i(s, a)`` (advantages from
a linear feature baseline refit on task ``i``'s own episodes, normalised per task), the inner loop takes
``k`` gradient steps (eq. 1; one step shown)::

    phi_i(theta) = theta - alpha * grad_theta L_i(theta; D_i)

and the outer loop minimises the post-adaptation loss on fresh trajectories ``D'_i ~ pi_{phi_i}``
averaged over a meta-batch of tasks (eq. 3, algorithm 3)::

    min_theta  1/N sum_i L'_i(phi_i(theta); D'_i)

with TRPO (as in the paper) on the importance-weighted surrogate
``L'_i = -mean_{D'_i}[pi_{phi_i(theta)}(a|s) / pi_{phi_i(theta_old)}(a|s) * A'_i]`` under the constraint
``1/N sum_i mean_{s in D'_i} KL(pi_{phi_i(theta_old)}(.|s) || pi_{phi_i(theta)}(.|s)) <= delta``. The
gradient flows through the inner step (second order: ``d phi_i / d theta = I - alpha H_i``); with
``first_order=True`` the inner gradient is treated as a constant (``d phi_i / d theta = I``, FOMAML).
Every candidate ``theta`` of the line search re-runs the inner adaptation on the *same* pre-adaptation
episodes ``D_i`` (as ``cbfinn/maml_rl`` and ``tristandeleu/pytorch-maml-rl`` do). ``outer="ppo"``
replaces TRPO by a few epochs of Adam on PPO's clipped surrogate
``-mean[min(r A', clip(r, 1-eps, 1+eps) A')]``, re-adapting from the current ``theta`` every epoch.

Choices where codebases differ, and ours:

- Surrogate and KL are *averaged* over tasks (pytorch-maml-rl); the TRPO step is invariant to the scale
  of the objective, so this equals the paper's sum.
- KL direction ``KL(old || new)`` as in TRPO; its Hessian at ``theta_old`` (all that CG uses) is the same
  for both directions.
- CG damping defaults to 0.1 (rllab's ``ConjugateGradientOptimizer`` uses ``reg_coeff=1e-5``,
  pytorch-maml-rl 1e-5 too); the line search scales the step to the KL bound either way.
- Evaluation (``adapt``) follows ``test_maml_point.py``: the first step uses ``inner_lr``, later steps
  half of it (``eval_lrs`` overrides), 40 episodes per step in the paper's benchmark.

All tasks of a meta-batch are rolled out together through the batched env, and the per-task inner
steps are one batched backward pass over stacked parameters (:mod:`metarl.functional`): there is no
Python loop over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

from metarl import functional as F
from metarl import trpo
from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.learner import AdaptationResult, AdaptedPolicy
from metarl.pg import by_task, finetune_by_policy_gradient, reinforce_loss, task_advantages, task_log_probs
from metarl.policies import make_policy, policy_params
from metarl.rollout import TaskEnvs, task_policy_act_fn
from metarl.trpo import trpo_step
from metarl.types import Task, TrajectoryBatch

OUTER_OPTIMIZERS = ("trpo", "ppo")


@dataclass(frozen=True)
class MamlRLConfig:
    hidden: tuple[int, ...] = option((100, 100), "hidden layer sizes of the MLP policy (MAML: 2x100 ReLU)")
    activation: str = option("relu", "hidden activation: relu or tanh")
    init_std: float = option(1.0, "initial std of Gaussian actions, in normalised units (1 = half the action range)")
    meta_batch_size: int = option(20, "tasks per meta-iteration (paper: 20, released code: 40)")
    fast_batch_size: int = option(20, "episodes per task for each inner step and for the outer loss (paper: 20)")
    num_inner_steps: int = option(1, "inner policy-gradient steps k during meta-training (paper: 1)")
    inner_lr: float = option(0.1, "inner step size alpha (paper appendix: 0.1; released code: 0.5)")
    first_order: bool = option(False, "drop the second-order term of the meta-gradient (FOMAML)")
    gamma: float = option(0.99, "discount factor")
    gae_lambda: float = option(1.0, "GAE lambda of the outer advantages (1: returns minus the linear baseline, "
                                    "as the paper; the inner step always uses 1)")
    outer: str = option("trpo", "outer optimiser: trpo (paper) or ppo (clipped surrogate, Adam)")
    max_kl: float = option(0.01, "TRPO: bound delta on the mean KL between old and new adapted policies")
    cg_iters: int = option(10, "TRPO: conjugate-gradient iterations")
    cg_damping: float = option(0.1, "TRPO: damping lambda added to the KL Hessian in CG")
    ls_backtrack_ratio: float = option(0.8, "TRPO: line-search shrink factor")
    ls_max_steps: int = option(15, "TRPO: line-search candidates before giving up (parameters kept)")
    ppo_epochs: int = option(5, "PPO outer loop: Adam steps per meta-batch (each re-runs the inner adaptation)")
    ppo_clip: float = option(0.2, "PPO outer loop: clipping range epsilon")
    outer_lr: float = option(1e-3, "PPO outer loop: Adam learning rate")
    max_grad_norm: float = option(1.0, "PPO outer loop: gradient-norm clipping (0 disables)")
    eval_lrs: tuple[float, ...] = option((), "step sizes of evaluation steps 1, 2, ... (last repeats); empty: "
                                             "inner_lr, then inner_lr/2 (released test script)")
    adapt_episodes: int = option(20, "episodes per task per evaluation step when the caller gives none "
                                     "(paper's test: 40)")

    def __post_init__(self) -> None:
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                f"hidden sizes must be >= 1, got {self.hidden}")
        require_at_least(self, 1, "meta_batch_size", "fast_batch_size", "num_inner_steps", "cg_iters",
                         "ls_max_steps", "ppo_epochs", "adapt_episodes")
        require(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        require_positive(self, "inner_lr", "init_std", "max_kl", "ppo_clip", "outer_lr")
        require_at_least(self, 0, "cg_damping", "max_grad_norm")
        require(0.0 < self.ls_backtrack_ratio < 1.0,
                f"ls_backtrack_ratio must be in (0, 1), got {self.ls_backtrack_ratio}")
        require_choice(self, "outer", OUTER_OPTIMIZERS)
        require(all(lr > 0 for lr in self.eval_lrs), f"eval_lrs must all be > 0, got {self.eval_lrs}")

    @property
    def adaptation_lrs(self) -> tuple[float, ...]:
        """Step sizes of evaluation steps 1, 2, ... (the last one repeats)."""
        return self.eval_lrs or (self.inner_lr, self.inner_lr / 2)


# ----------------------------------------------------------------------------------------------------------
# The math, as functions of tensors. Shapes: T steps, N tasks, E episodes per task, B = N * E columns.


def inner_step(policy: nn.Module, stacked: F.Params, batch: TrajectoryBatch, advantages: torch.Tensor,
               n_tasks: int, lr: float, create_graph: bool) -> F.Params:
    """One vanilla policy-gradient step of every task on its own episodes (eq. 1), all tasks at once.

    ``stacked``: parameters ``[N, ...]``; ``advantages``: ``[T, B]`` fixed (they do not depend on the
    parameters). The same step as :func:`metarl.pg.adapt_step`, with the advantages computed once so
    that TRPO's line search can re-run the adaptation without refitting the baselines.
    """
    losses = reinforce_loss(task_log_probs(policy, stacked, batch, n_tasks), advantages, batch.mask, n_tasks)
    return F.sgd_step(stacked, losses.sum(), lr, create_graph=create_graph)


def adapt_from(policy: nn.Module, theta: F.Params, batches: Sequence[TrajectoryBatch],
               advantages: Sequence[torch.Tensor], n_tasks: int, lr: float, create_graph: bool) -> F.Params:
    """``phi_i(theta)`` for every task: ``len(batches)`` inner steps from the shared ``theta``.

    Returns stacked parameters ``[N, ...]``, a differentiable function of ``theta`` (second order with
    ``create_graph=True``; first order otherwise: the inner gradients are constants).
    """
    stacked = F.stack_params(theta, n_tasks)
    for batch, adv in zip(batches, advantages, strict=True):
        stacked = inner_step(policy, stacked, batch, adv, n_tasks, lr, create_graph)
    return stacked


def task_mean(x: torch.Tensor, mask: torch.Tensor, n_tasks: int) -> torch.Tensor:
    """``[T, B] -> [N]``: mean of ``x`` over each task's real steps."""
    num = by_task(x * mask, n_tasks).sum(dim=(1, 2))
    return num / by_task(mask, n_tasks).sum(dim=(1, 2)).clamp(min=1.0)


def adapted_distribution(policy: nn.Module, adapted: F.Params, batch: TrajectoryBatch, n_tasks: int) -> Distribution:
    """Each task's adapted policy on its own observations; batch shape ``[N, T, E]``."""
    return F.task_distribution(policy, adapted, by_task(batch.obs, n_tasks))


def _to_columns(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``[N, T, E] -> [T, B]``."""
    return x.transpose(0, 1).reshape(like.shape)


def outer_surrogate(policy: nn.Module, adapted: F.Params, batch: TrajectoryBatch, advantages: torch.Tensor,
                    old_log_probs: torch.Tensor, n_tasks: int, clip: float | None = None) -> torch.Tensor:
    """``[N]`` post-adaptation surrogate loss ``-mean[r A]`` per task, ``r = pi_phi(a|s) / pi_old(a|s)``.

    With ``clip`` it is PPO's ``-mean[min(r A, clip(r, 1 - clip, 1 + clip) A)]``. At ``r = 1`` its
    gradient is the policy gradient, so TRPO's ``g`` is the MAML meta-gradient.
    """
    ratio = (task_log_probs(policy, adapted, batch, n_tasks) - old_log_probs).exp()
    objective = ratio * advantages
    if clip is not None:
        objective = torch.min(objective, ratio.clamp(1 - clip, 1 + clip) * advantages)
    return -task_mean(objective, batch.mask, n_tasks)


def mean_kl(old: Distribution, policy: nn.Module, adapted: F.Params, batch: TrajectoryBatch,
            n_tasks: int) -> torch.Tensor:
    """Scalar: ``KL(old || pi_phi)`` averaged over each task's real steps, then over tasks."""
    kl = kl_divergence(old, adapted_distribution(policy, adapted, batch, n_tasks))  # [N, T, E]
    return task_mean(_to_columns(kl, batch.mask), batch.mask, n_tasks).mean()


def kl_curvature(policy: nn.Module, theta: F.Params, batches: Sequence[TrajectoryBatch],
                 advantages: Sequence[torch.Tensor], valid: TrajectoryBatch, old: Distribution, n_tasks: int,
                 lr: float, second_order: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """``v -> H v``, ``H`` the Hessian of :func:`mean_kl` with respect to ``theta`` at ``theta = theta_old``.

    Exactly ``H = J^T F J`` (Gauss-Newton): ``J = d phi / d theta`` is the Jacobian of the adaptation and
    ``F`` the Hessian of the KL with respect to the adapted parameters ``phi``. The remaining term of the
    chain rule, ``(d^2 phi / d theta^2) . grad_phi KL``, vanishes because ``grad_phi KL(pi_old || pi_phi) = 0``
    at ``phi = phi_old``. Each inner step ``phi_j = phi_{j-1} - lr grad L_j(phi_{j-1})`` has the symmetric
    Jacobian ``J_j = I - lr H_{L_j}``, so ``J v = J_k ... J_1 v`` and ``J^T w = J_1 ... J_k w`` need only
    Hessian-vector products of the inner losses (first order: ``J = I``). This avoids differentiating
    the KL's gradient through the inner step (third derivatives of the inner loss that are multiplied
    by zero), about half the cost of autograd's double backward of the KL with respect to ``theta``.
    ``v`` and the result are flat vectors ``[P]`` over ``theta``'s tensors in order.
    """
    names = list(theta)
    phi = {k: v.detach().unsqueeze(0).expand(n_tasks, *v.shape).contiguous() for k, v in theta.items()}
    inner: list[tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]] = []
    for batch, adv in zip(batches, advantages, strict=True):
        leaves = [phi[k].detach().requires_grad_(True) for k in names]
        losses = reinforce_loss(task_log_probs(policy, dict(zip(names, leaves, strict=True)), batch, n_tasks),
                                adv, batch.mask, n_tasks)
        grads = torch.autograd.grad(losses.sum(), leaves, create_graph=second_order)
        inner.append((leaves, grads))
        phi = {k: (x - lr * g).detach() for k, x, g in zip(names, leaves, grads, strict=True)}
    leaves = [phi[k].requires_grad_(True) for k in names]
    kl = mean_kl(old, policy, dict(zip(names, leaves, strict=True)), valid, n_tasks)
    kl_grads = torch.autograd.grad(kl, leaves, create_graph=True)

    def hessian(of: tuple[torch.Tensor, ...], wrt: list[torch.Tensor], w: list[torch.Tensor]) -> list[torch.Tensor]:
        dot = torch.stack([(g * x).sum() for g, x in zip(of, w, strict=True)]).sum()
        return list(torch.autograd.grad(dot, wrt, retain_graph=True))

    def jacobian(w: list[torch.Tensor], steps: Sequence[tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]]
                 ) -> list[torch.Tensor]:
        for step_leaves, step_grads in steps:
            w = [x - lr * h for x, h in zip(w, hessian(step_grads, step_leaves, w), strict=True)]
        return w

    shapes = [theta[k] for k in names]

    def hvp(v: torch.Tensor) -> torch.Tensor:
        w = [x.unsqueeze(0).expand(n_tasks, *x.shape) for x in trpo.unflatten_like(v, shapes)]
        if second_order:
            w = jacobian(w, inner)                       # J v
        w = hessian(kl_grads, leaves, w)                 # F J v
        if second_order:
            w = jacobian(w, inner[::-1])                 # J^T F J v
        return trpo.flat([x.sum(0) for x in w])          # theta is shared: d/dtheta sums over tasks

    return hvp


def _detached(stacked: F.Params) -> F.Params:
    return {k: v.detach().contiguous().requires_grad_(True) for k, v in stacked.items()}


# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaBatch:
    """Everything one meta-iteration samples: ``k`` pre-adaptation batches and the post-adaptation batch."""

    train: list[TrajectoryBatch]
    train_advantages: list[torch.Tensor]
    valid: TrajectoryBatch
    valid_advantages: torch.Tensor


class MamlRLAgent:
    """MAML with policy-gradient inner steps and a TRPO (or PPO) outer loop."""

    def __init__(self, envs: TaskEnvs, config: MamlRLConfig, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.envs, self.config, self.seed, self.device = envs, config, seed, torch.device(device)
        torch.manual_seed(seed)
        self.policy = make_policy(envs.observation_space, envs.action_space, config.hidden, config.activation,
                                  config.init_std).to(self.device)
        self.optimizer = (torch.optim.Adam(self.policy.parameters(), lr=config.outer_lr)
                          if config.outer == "ppo" else None)
        self.steps_done = 0

    # -- sampling ------------------------------------------------------------------------------------------

    def sample(self, tasks: Sequence[Task]) -> MetaBatch:
        """Roll out ``k`` pre-adaptation batches (each with the parameters adapted so far) and one
        post-adaptation batch, all tasks at once."""
        c, n = self.config, len(tasks)
        stacked = _detached(F.stack_params({k: v.detach() for k, v in policy_params(self.policy).items()}, n))
        train: list[TrajectoryBatch] = []
        advs: list[torch.Tensor] = []
        base_seed = self.seed * 1_000_003 + self.steps_done * 7919
        for k in range(c.num_inner_steps):
            batch = self.envs.collect(task_policy_act_fn(self.policy, stacked, n), tasks, c.fast_batch_size,
                                      seed=base_seed + 104_729 * k, device=self.device)
            adv = task_advantages(batch, n, c.gamma)  # the inner step's advantages: lambda = 1, as in pg.adapt_step
            train.append(batch)
            advs.append(adv)
            stacked = _detached(inner_step(self.policy, stacked, batch, adv, n, c.inner_lr, create_graph=False))
        valid = self.envs.collect(task_policy_act_fn(self.policy, stacked, n), tasks, c.fast_batch_size,
                                  seed=base_seed + 104_729 * c.num_inner_steps, device=self.device)
        return MetaBatch(train, advs, valid, task_advantages(valid, n, c.gamma, c.gae_lambda))

    def _adapt(self, data: MetaBatch, n: int, create_graph: bool) -> F.Params:
        return adapt_from(self.policy, policy_params(self.policy), data.train, data.train_advantages, n,
                          self.config.inner_lr, create_graph)

    # -- the outer update ----------------------------------------------------------------------------------

    def meta_train_step(self, tasks: Sequence[Task]) -> dict[str, float]:
        c, n = self.config, len(tasks)
        data = self.sample(tasks)
        second_order = not c.first_order
        with torch.no_grad():
            old_adapted = {k: v.detach() for k, v in self._adapt_values(data, n).items()}
            old_dist = adapted_distribution(self.policy, old_adapted, data.valid, n)
            old_log_probs = _to_columns(old_dist.log_prob(by_task(data.valid.actions, n)), data.valid.mask)

        def loss_and_kl(need_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
            adapted = self._adapt(data, n, create_graph=second_order and need_graph)
            loss = outer_surrogate(self.policy, adapted, data.valid, data.valid_advantages, old_log_probs, n).mean()
            return loss, mean_kl(old_dist, self.policy, adapted, data.valid, n)

        metrics: dict[str, float] = {}
        def curvature() -> Callable[[torch.Tensor], torch.Tensor]:
            return kl_curvature(self.policy, policy_params(self.policy), data.train, data.train_advantages,
                                data.valid, old_dist, n, c.inner_lr, second_order)

        if c.outer == "trpo":
            info = trpo_step(list(self.policy.parameters()), loss_and_kl, c.max_kl, c.cg_iters, c.cg_damping,
                             c.ls_backtrack_ratio, c.ls_max_steps, curvature=curvature)
            metrics.update(info.metrics())
        else:
            metrics.update(self._ppo_update(data, n, old_log_probs, old_dist, second_order))
        self.steps_done += 1
        pre = data.train[0].episode_returns
        steps = sum(b.num_steps for b in data.train) + data.valid.num_steps
        metrics.update({
            "rollout/pre_adapt_return": float(pre.mean()),
            "rollout/post_adapt_return": float(data.valid.episode_returns.mean()),
            "rollout/episode_length": float(data.valid.lengths.mean()),
            "rollout/env_steps": float(steps),
        })
        return metrics

    def _adapt_values(self, data: MetaBatch, n: int) -> F.Params:
        # Autograd is needed for the inner gradient itself even when only the values are wanted.
        with torch.enable_grad():
            return self._adapt(data, n, create_graph=False)

    def _ppo_update(self, data: MetaBatch, n: int, old_log_probs: torch.Tensor, old_dist: Distribution,
                    second_order: bool) -> dict[str, float]:
        c = self.config
        assert self.optimizer is not None
        before = after = 0.0
        for epoch in range(c.ppo_epochs):
            adapted = self._adapt(data, n, create_graph=second_order)
            loss = outer_surrogate(self.policy, adapted, data.valid, data.valid_advantages, old_log_probs, n,
                                   clip=c.ppo_clip).mean()
            if epoch == 0:
                before = loss.item()
            self.optimizer.zero_grad()
            loss.backward()
            if c.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
            self.optimizer.step()
        adapted = {k: v.detach() for k, v in self._adapt_values(data, n).items()}
        with torch.no_grad():
            after = outer_surrogate(self.policy, adapted, data.valid, data.valid_advantages, old_log_probs, n,
                                    clip=c.ppo_clip).mean().item()
            kl = mean_kl(old_dist, self.policy, adapted, data.valid, n).item()
        return {"train/surrogate_before": before, "train/surrogate_after": after, "train/kl": kl}

    # -- adaptation ----------------------------------------------------------------------------------------

    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None) -> AdaptationResult:
        c = self.config
        return finetune_by_policy_gradient(
            self.policy, policy_params(self.policy), self.envs, tasks, budget,
            episodes_per_step or c.adapt_episodes, list(c.adaptation_lrs), c.gamma, seed, self.device)

    def adapt(self, task: Task, budget: int, seed: int = 0) -> AdaptedPolicy:
        return self.adapt_many([task], budget, seed).adapted[0]

    # -- state ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"policy": self.policy.state_dict(), "steps_done": self.steps_done,
                                 "seed": self.seed}
        if self.optimizer is not None:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])
        self.seed = int(state["seed"])

    def to(self, device: torch.device | str) -> MamlRLAgent:
        self.device = torch.device(device)
        self.policy.to(self.device)
        return self


__all__ = ["MamlRLAgent", "MamlRLConfig", "MetaBatch", "adapt_from", "inner_step", "kl_curvature", "mean_kl",
           "outer_surrogate", "task_mean"]
