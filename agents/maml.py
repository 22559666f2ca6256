"""MAML for supervised few-shot learning (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML, sec. 3.1 and 5.1-5.2; reference code ``cbfinn/maml``), with its
first-order approximation (FOMAML, same paper sec. 5.2) and ANIL (Raghu et al. 2020, "Rapid Learning or
Feature Reuse?", ICLR).

For a task ``T_i`` with support set ``D_i`` and query set ``D'_i`` the inner loop takes ``k`` gradient
steps from the shared initialisation ``theta`` (eq. 1, algorithm 2)::

    phi_i^0 = theta,    phi_i^{j+1} = phi_i^j - alpha * grad_phi L_{T_i}(f_{phi_i^j}; D_i)

with the cross-entropy loss (classification) or the mean squared error (regression, eq. 2-3), and the
outer loop minimises the query loss after adaptation over a meta-batch of tasks with Adam (eq. 4)::

    min_theta  1/B sum_i L_{T_i}(f_{phi_i^k(theta)}; D'_i)

The meta-gradient flows through the inner steps: ``d phi / d theta = prod_j (I - alpha H_j)``
(second order). ``first_order=True`` treats every inner gradient as a constant, ``d phi / d theta = I``
(FOMAML). ``anil=True`` adapts only the head (the last linear layer) in the inner loop and meta-learns
the whole network through it (Raghu et al.'s "almost no inner loop").

Published setups (paper, appendix A): sinusoid: MLP 2x40 ReLU, K points for the inner step and K for
the meta-loss, 1 step with alpha = 0.01, meta-batch 25, Adam 1e-3, 70,000 iterations. Omniglot 5-way:
Conv-4 with stride-2 convolutions, 1 inner step with alpha = 0.4 (3 steps at test), meta-batch 32;
20-way: 5 steps with alpha = 0.1 (train and test), meta-batch 16; 60,000 iterations.

Choices where codebases differ, and ours:

- BatchNorm uses the statistics of the batch it normalises, at training and test time, with no running
  averages (the reference code, learn2learn); how queries are normalised at test is the
  ``batch_norm`` policy (:mod:`metarl.supervised`): ``transductive`` (the query set's statistics, the
  reference code) or ``per-query`` (support set + one query).
- The head reads the spatial mean of the last block (reference code: ``reduce_mean``), 64 features.
- Tasks of a meta-batch run in a loop on CPU (faster there, SPEED.md) and through ``torch.func.vmap``
  on CUDA (``batching``); both give the same meta-gradient (tested).
- Test-time steps use ``eval_lr`` (default: ``inner_lr``), as the reference code.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.supervised import (
    BATCHING,
    BN_POLICIES,
    AdaptedPredictor,
    FewShotResult,
    InnerSGD,
    Problem,
    adaptation_result,
    build_backbone,
    head_parameter_names,
    learner_state,
    outer_step,
    resolve_batching,
    restore_learner_state,
    sgd_adaptation,
)
from metarl.types import Episode


@dataclass(frozen=True)
class MamlConfig:
    backbone: str = option("auto", "network: conv4-stride (paper, Omniglot), conv4-pool or mlp; auto = conv4-stride "
                                   "for images, mlp (2x40) for vectors")
    hidden: tuple[int, ...] = option((), "Conv-4 channels (default 64) or MLP hidden sizes (default 40 40)")
    meta_batch_size: int = option(32, "tasks per outer update (paper: 32 Omniglot 5-way, 16 for 20-way, 25 sinusoid)")
    inner_steps: int = option(1, "inner gradient steps during meta-training (paper: 1; 5 for Omniglot 20-way)")
    inner_lr: float = option(0.4, "inner step size alpha (paper: 0.4 Omniglot 5-way, 0.1 20-way, 0.01 sinusoid)")
    eval_steps: int = option(3, "gradient steps at test time (paper: 3 Omniglot 5-way, 5 for 20-way; sinusoid 1)")
    eval_lr: float = option(0.0, "step size at test time; 0 = inner_lr")
    outer_lr: float = option(1e-3, "Adam learning rate of the outer loop (paper: 1e-3)")
    first_order: bool = option(False, "drop the second-order term of the meta-gradient (FOMAML)")
    anil: bool = option(False, "adapt only the head in the inner loop (ANIL, Raghu et al. 2020)")
    batch_norm: str = option("transductive", "queries at test: transductive (query-set statistics, reference code) "
                                             "or per-query (support set + that query; non-transductive)")
    batching: str = option("auto", "tasks of a meta-batch: loop, vmap, or auto (vmap on CUDA, loop on CPU)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size", "inner_steps")
        require_at_least(self, 0, "eval_steps")
        require_positive(self, "inner_lr", "outer_lr")
        require(self.eval_lr >= 0, f"eval_lr must be >= 0 (0 = inner_lr), got {self.eval_lr}")
        require_choice(self, "batch_norm", BN_POLICIES)
        require_choice(self, "batching", BATCHING)


class MamlLearner:
    """MAML / FOMAML / ANIL on the shared learner interface."""

    def __init__(self, config: MamlConfig, problem: Problem, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.config, self.problem, self.seed, self.device = config, problem, seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = build_backbone(config.backbone, problem, "conv4-stride", hidden=config.hidden).to(self.device)
        self.adapt_names = head_parameter_names(self.net) if config.anil else None
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.outer_lr)
        self.batching = resolve_batching(config.batching, self.device, self.net)
        self.steps_done = 0

    def inner_loop(self, training: bool) -> InnerSGD:
        c = self.config
        if training:
            return InnerSGD(c.inner_steps, c.inner_lr, second_order=not c.first_order, adapt=self.adapt_names)
        return InnerSGD(1, c.eval_lr or c.inner_lr, second_order=False, adapt=self.adapt_names)

    def meta_train_step(self, tasks: Sequence[Episode]) -> dict[str, float]:
        metrics = outer_step(self.net, self.optimizer, [t.to(self.device) for t in tasks], self.inner_loop(True),
                             self.batching, self.problem.metric)
        self.steps_done += 1
        return metrics

    def _adapt(self, task: Episode, budget: int) -> tuple[list[float], AdaptedPredictor]:
        return sgd_adaptation(self.net, dict(self.net.named_parameters()), task.to(self.device),
                              self.inner_loop(False), budget, self.config.batch_norm, self.problem.kind)

    def adapt(self, task: Episode, budget: int | None = None) -> AdaptedPredictor:
        """``budget`` gradient steps (default ``eval_steps``) on the support set."""
        return self._adapt(task, self.config.eval_steps if budget is None else budget)[1]

    def adapt_many(self, tasks: Sequence[Episode], budget: int, seed: int = 0,
                   keep_adapted: bool = True) -> FewShotResult:
        """Query metric after 0 .. ``budget`` steps on each task (deterministic: ``seed`` is unused)."""
        return adaptation_result(self.problem.metric, tasks, lambda i, t: self._adapt(t, budget), keep_adapted)

    def state_dict(self) -> dict[str, Any]:
        return learner_state(self.net, self.optimizer, self.steps_done, self.seed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.seed = restore_learner_state(self.net, self.optimizer, state)

    def to(self, device: torch.device | str) -> MamlLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        self.batching = resolve_batching(self.config.batching, self.device, self.net)
        return self


__all__ = ["MamlConfig", "MamlLearner"]
