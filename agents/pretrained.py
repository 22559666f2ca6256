"""Multi-task "pretrained" policy: the baseline every meta-RL evaluation needs.

Finn et al. (2017, section 5.3) compare MAML with "pretraining one policy on all of the tasks and
then fine-tuning". This learner does exactly that:

- **Training** (``meta_train_step``): one policy, no task information, trained with PPO's clipped
  surrogate (Schulman et al. 2017) on episodes from a batch of training tasks,
  ``L(theta) = -E[min(r_t A_t, clip(r_t, 1-eps, 1+eps) A_t)] - c_H H[pi_theta]``,
  ``r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t)`` (:func:`metarl.ppo.clipped_surrogate_loss`), with GAE
  advantages (Schulman et al. 2016) on the linear feature baseline refit per task.
- **Adaptation** (``adapt``): ``budget`` vanilla policy-gradient steps
  ``theta_{k+1} = theta_k + alpha grad_theta E[log pi_theta(a|s) A]`` on fresh episodes of the new
  task, exactly the fine-tuning of the MAML paper (and MAML-RL's inner step).

With ``iterations=0`` it is the "random initialisation" baseline (a policy trained from scratch on
the adaptation budget).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from metarl.config import option, require, require_at_least, require_positive
from metarl.learner import AdaptationResult, AdaptedPolicy
from metarl.pg import finetune_by_policy_gradient, task_advantages
from metarl.policies import make_policy, policy_params
from metarl.ppo import clipped_surrogate_loss
from metarl.rollout import TaskEnvs, task_policy_act_fn
from metarl.types import Task


@dataclass(frozen=True)
class PretrainedConfig:
    hidden: tuple[int, ...] = option((100, 100), "hidden layer sizes of the MLP policy (MAML: 2x100 ReLU)")
    activation: str = option("relu", "hidden activation: relu or tanh")
    init_std: float = option(1.0, "initial std of Gaussian actions, in normalised units (1 = half the action range)")
    meta_batch_size: int = option(20, "tasks per training iteration")
    episodes_per_task: int = option(20, "episodes sampled per task per iteration")
    gamma: float = option(0.99, "discount factor")
    gae_lambda: float = option(0.97, "GAE lambda for the PPO training advantages")
    lr: float = option(1e-3, "Adam learning rate of the PPO updates")
    ppo_epochs: int = option(5, "passes over each batch")
    minibatches: int = option(4, "minibatches per pass")
    clip: float = option(0.2, "PPO clipping range epsilon")
    entropy_coef: float = option(0.0, "entropy bonus coefficient c_H")
    max_grad_norm: float = option(1.0, "gradient-norm clipping (0 disables)")
    adapt_lr: float = option(0.15, "step size alpha of the fine-tuning policy-gradient steps (0.15: the "
                                   "largest of 0.1/0.15/0.2/0.3 rising steadily over 4 steps on Navigation2D)")
    adapt_episodes: int = option(20, "episodes per task per fine-tuning step (MAML paper: 20 in training, 40 in tests)")

    def __post_init__(self) -> None:
        require(len(self.hidden) >= 1 and all(h >= 1 for h in self.hidden),
                f"hidden sizes must be >= 1, got {self.hidden}")
        require_at_least(self, 1, "meta_batch_size", "episodes_per_task", "ppo_epochs", "minibatches",
                         "adapt_episodes")
        require(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        require(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        require_positive(self, "lr", "adapt_lr", "clip", "init_std")
        require_at_least(self, 0, "entropy_coef", "max_grad_norm")


class PretrainedAgent:
    """A single policy trained across tasks with PPO, fine-tuned per task by policy gradient."""

    def __init__(self, envs: TaskEnvs, config: PretrainedConfig, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.envs, self.config, self.seed, self.device = envs, config, seed, torch.device(device)
        torch.manual_seed(seed)
        self.policy = make_policy(envs.observation_space, envs.action_space, config.hidden, config.activation,
                                  config.init_std).to(self.device)
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.steps_done = 0

    def meta_train_step(self, tasks: Sequence[Task]) -> dict[str, float]:
        c, n = self.config, len(tasks)
        batch = self.envs.collect(task_policy_act_fn(self.policy, None, n), tasks, c.episodes_per_task,
                                  seed=self.seed * 1_000_003 + self.steps_done * 7919, device=self.device)
        adv = task_advantages(batch, n, c.gamma, c.gae_lambda)
        valid = batch.mask.reshape(-1) > 0
        obs = batch.obs.reshape(-1, batch.obs.shape[-1])[valid]
        actions = batch.actions.reshape(-1, *batch.actions.shape[2:])[valid]
        old_logp = batch.log_probs.reshape(-1)[valid]
        advantages = adv.reshape(-1)[valid]
        size = obs.shape[0]
        losses, entropies, clip_fracs, kls = [], [], [], []
        for _ in range(c.ppo_epochs):
            perm = torch.randperm(size, device=self.device)
            for idx in perm.chunk(c.minibatches):
                dist = self.policy.distribution(obs[idx])
                terms = clipped_surrogate_loss(dist.log_prob(actions[idx]), old_logp[idx], advantages[idx], c.clip)
                entropy = dist.entropy().mean()
                loss = terms.loss - c.entropy_coef * entropy
                self.optimizer.zero_grad()
                loss.backward()
                if c.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(self.policy.parameters(), c.max_grad_norm)
                self.optimizer.step()
                losses.append(loss.item())
                entropies.append(entropy.item())
                clip_fracs.append(terms.clip_fraction.item())
                kls.append(terms.approx_kl.item())
        self.steps_done += 1
        returns = batch.episode_returns
        return {
            "train/loss": float(np.mean(losses)),
            "train/entropy": float(np.mean(entropies)),
            "train/clip_fraction": float(np.mean(clip_fracs)),
            "train/approx_kl": float(np.mean(kls)),
            "rollout/return_mean": float(returns.mean()),
            "rollout/episode_length": float(batch.lengths.mean()),
            "rollout/env_steps": float(batch.num_steps),
        }

    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None) -> AdaptationResult:
        c = self.config
        return finetune_by_policy_gradient(
            self.policy, policy_params(self.policy), self.envs, tasks, budget,
            episodes_per_step or c.adapt_episodes, [c.adapt_lr], c.gamma, seed, self.device)

    def adapt(self, task: Task, budget: int, seed: int = 0) -> AdaptedPolicy:
        return self.adapt_many([task], budget, seed).adapted[0]

    def state_dict(self) -> dict[str, Any]:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "steps_done": self.steps_done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps_done = int(state["steps_done"])
        self.seed = int(state["seed"])

    def to(self, device: torch.device | str) -> PretrainedAgent:
        self.device = torch.device(device)
        self.policy.to(self.device)
        return self
