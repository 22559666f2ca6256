"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning", NeurIPS;
reference code ``jakesnell/prototypical-networks``).

An embedding ``f_theta`` (Conv-4 with max-pooling: 64 features for 28x28 Omniglot) maps each class's
support examples ``S_c`` to its prototype, their mean (eq. 1)::

    c_k = 1/|S_k| sum_{(x_i, y_i) in S_k} f_theta(x_i)

and a query ``x`` is classified by a softmax over negative squared Euclidean distances (eq. 2)::

    p_theta(y = k | x) = exp(-d(f_theta(x), c_k)) / sum_k' exp(-d(f_theta(x), c_k')),   d(z, z') = ||z - z'||^2

Training minimises ``J = -log p_theta(y = k | x)`` averaged over the queries of an episode (algorithm 1),
one episode per Adam step (learning rate 1e-3, halved every 2000 episodes). The paper trains
Omniglot with 60-way episodes and 5 queries per class, with as many shots as at test time (in this
package: ``metarl fewshot protonet --train-ways 60 --train-queries 5``).

Adaptation (``adapt``) computes the prototypes of the support set; there are no gradient steps, so
the adaptation curve has one stage.

Choices where codebases differ, and ours:

- BatchNorm: in training the support and query images are embedded in one batch (the reference
  code's ``torch.cat([xs, xq])``), with batch statistics. At test the reference code calls
  ``model.eval()``: running averages from training, i.e. *non-transductive* (``batch_norm="running"``,
  the default). ``batch_norm="transductive"`` embeds the test support and queries in one batch with
  their own statistics instead, as in training.
- Distance: squared Euclidean (the paper's choice; cosine is worse in its Table 1 ablation).
- Learning-rate schedule by episode count (the reference code halves per 2000 episodes as well, as a
  ``StepLR`` over epochs of 100 episodes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as TF

from metarl.config import option, require, require_at_least, require_choice, require_positive
from metarl.supervised import (
    AdaptedPredictor,
    FewShotResult,
    Problem,
    adaptation_result,
    build_backbone,
    learner_state,
    query_metric,
    restore_learner_state,
)
from metarl.types import Episode

BATCH_NORM = ("running", "transductive")


@dataclass(frozen=True)
class ProtoNetConfig:
    backbone: str = option("auto", "embedding: conv4-pool (paper), conv4-stride or mlp; auto = conv4-pool for images, "
                                   "mlp for vectors")
    hidden: tuple[int, ...] = option((), "Conv-4 channels (default 64) or MLP hidden sizes (default 40 40)")
    meta_batch_size: int = option(1, "episodes per Adam step (paper: 1)")
    lr: float = option(1e-3, "Adam learning rate (paper: 1e-3)")
    lr_halve_every: int = option(2000, "halve the learning rate every this many steps (paper: 2000 episodes; "
                                       "0 = constant)")
    batch_norm: str = option("running", "BatchNorm at test: running (running averages, non-transductive, the "
                                        "reference code's model.eval()) or transductive (support + queries' "
                                        "own statistics)")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "meta_batch_size")
        require_positive(self, "lr")
        require(self.lr_halve_every >= 0, f"lr_halve_every must be >= 0 (0 = constant), got {self.lr_halve_every}")
        require_choice(self, "batch_norm", BATCH_NORM)


# ----------------------------------------------------------------------------------------------------------
# The math. M queries, N classes, K shots, D embedding features.


def prototypes(z_support: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Eq. 1: ``[N, D]`` mean embedding of each class's support examples ``z_support [N*K, D]``,
    ``labels [N*K]`` in ``[0, N)`` (by label, whatever the order of the examples)."""
    sums = torch.zeros(n_classes, z_support.shape[1], dtype=z_support.dtype, device=z_support.device)
    sums.index_add_(0, labels, z_support)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).to(z_support.dtype)
    return sums / counts[:, None]


def squared_distances(z: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """``[M, N]``: ``||z_m - c_n||^2`` for queries ``z [M, D]`` and prototypes ``protos [N, D]``."""
    return (z.unsqueeze(1) - protos.unsqueeze(0)).pow(2).sum(-1)


def prototype_logits(z_query: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """Eq. 2's logits ``-d(f(x), c_k)``, ``[M, N]``: their softmax is ``p(y = k | x)``."""
    return -squared_distances(z_query, protos)


def episode_logits(embed: Any, episode: Episode, queries: torch.Tensor) -> torch.Tensor:
    """Logits ``[M, N]`` of ``queries`` against the episode's prototypes; support and queries are embedded
    in one batch (training, and transductive test)."""
    k = episode.support_x.shape[0]
    z = embed(torch.cat([episode.support_x, queries]))
    return prototype_logits(z[k:], prototypes(z[:k], episode.support_y, episode.ways))


# ----------------------------------------------------------------------------------------------------------


class ProtoNetLearner:
    """Prototypical Networks on the shared learner interface (classification episodes only)."""

    def __init__(self, config: ProtoNetConfig, problem: Problem, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        if problem.kind != "classification":
            raise ValueError("protonet classifies: it needs a classification data set (e.g. --dataset omniglot), "
                             "not regression episodes; use maml, metasgd or lstm-opt for sinusoid")
        self.config, self.problem, self.seed, self.device = config, problem, seed, torch.device(device)
        torch.manual_seed(seed)
        self.net = build_backbone(config.backbone, problem, "conv4-pool", n_out=0, hidden=config.hidden,
                                  norm="running").to(self.device)
        # Channels-last convolution weights: 25-35% faster Conv-4 training episodes on CPU (measured on a
        # 360-image 60-way episode); the results are the same up to float round-off.
        self.net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        self.steps_done = 0

    def current_lr(self) -> float:
        c = self.config
        return c.lr * 0.5 ** (self.steps_done // c.lr_halve_every) if c.lr_halve_every else c.lr

    def meta_train_step(self, tasks: Sequence[Episode]) -> dict[str, float]:
        self.net.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.current_lr()
        self.optimizer.zero_grad()
        losses, accs = [], []
        for episode in tasks:
            e = episode.to(self.device)
            logits = episode_logits(self.net, e, e.query_x)
            loss = TF.cross_entropy(logits, e.query_y)
            (loss / len(tasks)).backward()
            losses.append(loss.item())
            accs.append(query_metric(logits.detach(), e.query_y))
        self.optimizer.step()
        self.steps_done += 1
        return {"train/loss": float(np.mean(losses)), "train/query_accuracy": float(np.mean(accs)),
                "train/lr": self.optimizer.param_groups[0]["lr"]}

    def adapt(self, task: Episode, budget: int = 0) -> AdaptedPredictor:
        """Prototypes of the support set; ``budget`` is unused (no gradient steps)."""
        e = task.to(self.device)
        if self.config.batch_norm == "transductive":
            self.net.train()
            frozen = {**dict(self.net.named_parameters()),
                      **{k: v.clone() for k, v in self.net.named_buffers()}}  # running stats stay untouched

            def embed(x: torch.Tensor) -> torch.Tensor:
                return torch.func.functional_call(self.net, frozen, (x,))

            return AdaptedPredictor(lambda x: episode_logits(embed, e, x.to(self.device)), "classification")
        with torch.no_grad():
            protos = prototypes(self._embed_eval(e.support_x), e.support_y, e.ways)
        return AdaptedPredictor(lambda x: prototype_logits(self._embed_eval(x.to(self.device)), protos),
                                "classification")

    def _embed_eval(self, x: torch.Tensor) -> torch.Tensor:
        self.net.eval()  # running BatchNorm statistics: no test example influences another
        return self.net(x)

    def adapt_many(self, tasks: Sequence[Episode], budget: int = 0, seed: int = 0,
                   keep_adapted: bool = True) -> FewShotResult:
        def one(i: int, task: Episode) -> tuple[list[float], AdaptedPredictor]:
            predictor = self.adapt(task, budget)
            return [query_metric(predictor.predict(task.query_x), task.query_y.to(self.device))], predictor

        return adaptation_result("accuracy", tasks, one, keep_adapted)

    def state_dict(self) -> dict[str, Any]:
        return learner_state(self.net, self.optimizer, self.steps_done, self.seed)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps_done, self.seed = restore_learner_state(self.net, self.optimizer, state)

    def to(self, device: torch.device | str) -> ProtoNetLearner:
        self.device = torch.device(device)
        self.net.to(self.device)
        return self


__all__ = ["ProtoNetConfig", "ProtoNetLearner", "episode_logits", "prototype_logits", "prototypes",
           "squared_distances"]
