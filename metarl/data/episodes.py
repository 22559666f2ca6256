"""N-way K-shot episodes from any class-indexed data set, with an explicit ``numpy.random.Generator``.

An episode (:class:`~metarl.types.Episode`) draws ``N`` distinct classes of one split, then ``K + Q``
distinct items of each (``K`` support, ``Q`` query); the classes get labels ``0 .. N-1`` in the order
drawn, so labels carry no information about class identity. Everything random comes from the
generator passed in: the same generator state gives the same episode, and no global random state
is touched.

Composition follows learn2learn's task transforms (ways, shots, load data, then transforms of the
loaded task), without their global ``random``: the sampler does the first three, and any number of
``transform(episode, rng) -> episode`` functions run after it, in order, on the same generator
(e.g. :func:`shuffle_examples`)::

    sampler = EpisodeSampler(dataset, classes=splits["train"], ways=5, shots=1, queries=15,
                             transforms=(shuffle_examples,))
    episode = sampler.sample(np.random.default_rng(0))

:class:`EpisodeSource` is what the training loop samples from (``sample_tasks(n, rng, split)``, as
the RL task envs): one sampler per split, with the training shape (e.g. ProtoNet's 60-way episodes)
apart from the evaluation shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from metarl.types import Episode

EpisodeTransform = Callable[[Episode, np.random.Generator], Episode]


class ClassDataset(Protocol):
    """A data set indexed by class: what :class:`EpisodeSampler` needs."""

    @property
    def num_classes(self) -> int: ...

    @property
    def item_shape(self) -> tuple[int, ...]: ...

    def class_sizes(self) -> np.ndarray: ...

    def load(self, classes: np.ndarray, items: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor: ...


@dataclass(frozen=True)
class EpisodeShape:
    """``ways`` classes, ``shots`` support and ``queries`` query examples per class."""

    ways: int
    shots: int
    queries: int

    def __post_init__(self) -> None:
        if self.ways < 1 or self.shots < 1 or self.queries < 0:
            raise ValueError(f"an episode needs ways >= 1, shots >= 1 and queries >= 0; got ways={self.ways}, "
                             f"shots={self.shots}, queries={self.queries}")

    def __str__(self) -> str:
        return f"{self.ways}-way {self.shots}-shot, {self.queries} queries per class"


class EpisodeSampler:
    """Draws episodes of one shape from the given classes of a data set."""

    def __init__(self, dataset: ClassDataset, classes: np.ndarray | Sequence[int], ways: int, shots: int,
                 queries: int, transforms: Sequence[EpisodeTransform] = (), device: torch.device | str = "cpu",
                 where: str = "the data set") -> None:
        self.dataset, self.shape = dataset, EpisodeShape(ways, shots, queries)
        self.classes = np.asarray(classes, dtype=np.int64)
        self.transforms, self.device = tuple(transforms), device
        sizes = dataset.class_sizes()[self.classes] if len(self.classes) else np.zeros(0, dtype=np.int64)
        if ways > len(self.classes):
            raise ValueError(f"{ways} ways but {where} has only {len(self.classes)} classes; "
                             f"choose --ways <= {len(self.classes)}")
        need = shots + queries
        if len(sizes) and need > int(sizes.min()):
            raise ValueError(f"shots + queries = {shots} + {queries} = {need}, but {where} has only "
                             f"{int(sizes.min())} examples in some classes; lower --shots or --queries")
        self._sizes = sizes

    def sample(self, rng: np.random.Generator) -> Episode:
        n, k, q = self.shape.ways, self.shape.shots, self.shape.queries
        pick = rng.choice(len(self.classes), size=n, replace=False)
        classes = self.classes[pick]
        items = np.stack([rng.choice(int(self._sizes[i]), size=k + q, replace=False) for i in pick])
        x = self.dataset.load(classes, items, self.device)  # [N, K + Q, *item]
        labels = torch.arange(n, device=x.device)
        episode = Episode(support_x=x[:, :k].reshape(n * k, *x.shape[2:]),
                          support_y=labels.repeat_interleave(k),
                          query_x=x[:, k:].reshape(n * q, *x.shape[2:]),
                          query_y=labels.repeat_interleave(q),
                          ways=n, classes=tuple(int(c) for c in classes))
        for transform in self.transforms:
            episode = transform(episode, rng)
        return episode


def shuffle_examples(episode: Episode, rng: np.random.Generator) -> Episode:
    """Random order of the support and of the query examples (labels move with their inputs)."""
    s = torch.from_numpy(rng.permutation(episode.support_x.shape[0])).to(episode.support_x.device)
    q = torch.from_numpy(rng.permutation(episode.query_x.shape[0])).to(episode.query_x.device)
    return Episode(episode.support_x[s], episode.support_y[s], episode.query_x[q], episode.query_y[q],
                   episode.ways, episode.classes)


class EpisodeSource:
    """Episodes of a class-split data set: ``sample_tasks(n, rng, split)`` for the training loop.

    ``train`` episodes have ``train_shape``; ``val`` and ``test`` episodes have ``test_shape``. The
    loop's periodic held-out check uses ``val`` (``held_out_split``), so test classes are seen only by
    the final evaluation.
    """

    held_out_split = "val"
    kind = "classification"

    def __init__(self, dataset: ClassDataset, splits: Mapping[str, np.ndarray], train_shape: EpisodeShape,
                 test_shape: EpisodeShape, name: str = "data set", transforms: Sequence[EpisodeTransform] = (),
                 device: torch.device | str = "cpu") -> None:
        self.dataset, self.splits, self.name = dataset, dict(splits), name
        self.train_shape, self.test_shape = train_shape, test_shape
        names = sorted(self.splits)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                shared = np.intersect1d(self.splits[a], self.splits[b])
                if shared.size:
                    raise ValueError(f"the {a} and {b} splits of {name} share {shared.size} classes (e.g. "
                                     f"{shared[:3].tolist()}); class splits must not overlap")
        self.samplers = {}
        for split, classes in self.splits.items():
            shape = train_shape if split == "train" else test_shape
            self.samplers[split] = EpisodeSampler(dataset, classes, shape.ways, shape.shots, shape.queries,
                                                  transforms, device, where=f"the {split} split of {name}")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.dataset.item_shape)

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Episode]:
        if split not in self.samplers:
            raise ValueError(f"split must be one of {sorted(self.samplers)}, got {split!r}")
        return [self.samplers[split].sample(rng) for _ in range(n)]


__all__ = ["ClassDataset", "EpisodeSampler", "EpisodeShape", "EpisodeSource", "EpisodeTransform",
           "shuffle_examples"]
