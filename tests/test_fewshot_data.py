"""Episodic sampling (shapes, labels, seeds, transforms, errors) and the sinusoid task family."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.data.episodes import EpisodeSampler, EpisodeShape, EpisodeSource, shuffle_examples
from metarl.data.sinusoid import SinusoidTask, SinusoidTasks, sample_sinusoid
from metarl.tasks import task_split
from metarl.types import Episode

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


class _Toy:
    """``num_classes`` classes of ``size`` items; item ``j`` of class ``c`` is the vector ``[c, j]``."""

    item_shape = (2,)

    def __init__(self, num_classes: int = 10, size: int = 6) -> None:
        self.num_classes, self.size = num_classes, size

    def class_sizes(self) -> np.ndarray:
        return np.full(self.num_classes, self.size)

    def load(self, classes: np.ndarray, items: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
        c = np.broadcast_to(classes[:, None], items.shape)
        return torch.tensor(np.stack([c, items], -1), dtype=torch.float32, device=device)


def test_episode_shapes_labels_and_distinct_draws() -> None:
    sampler = EpisodeSampler(_Toy(), classes=[1, 3, 5, 7, 9], ways=3, shots=2, queries=3)
    e = sampler.sample(np.random.default_rng(0))
    assert e.support_x.shape == (6, 2) and e.query_x.shape == (9, 2)
    assert e.support_y.tolist() == [0, 0, 1, 1, 2, 2] and e.query_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert e.ways == 3 and e.shots == 2 and e.queries == 3
    assert len(set(e.classes)) == 3 and set(e.classes) <= {1, 3, 5, 7, 9}
    for label, cls in enumerate(e.classes):  # every example of label l comes from class classes[l]
        xs = torch.cat([e.support_x[e.support_y == label], e.query_x[e.query_y == label]])
        assert (xs[:, 0] == cls).all()
        assert len(set(xs[:, 1].tolist())) == 5  # support and query items of a class are distinct


def test_seeded_reproducibility_without_global_state() -> None:
    sampler = EpisodeSampler(_Toy(), classes=range(10), ways=4, shots=1, queries=2)
    np.random.seed(0)
    a = sampler.sample(np.random.default_rng(5))
    np.random.seed(123)  # the global generator plays no part
    b = sampler.sample(np.random.default_rng(5))
    c = sampler.sample(np.random.default_rng(6))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x) and a.classes == b.classes
    assert not (torch.equal(a.query_x, c.query_x) and a.classes == c.classes)


def test_transforms_compose_and_keep_labels_with_inputs() -> None:
    seen: list[list[int]] = []

    def record(e: Episode, rng: np.random.Generator) -> Episode:  # runs after the shuffle, on the same generator
        seen.append(e.query_y.tolist())
        return e

    plain = EpisodeSampler(_Toy(10, 8), range(10), ways=3, shots=3, queries=4)
    mixed = EpisodeSampler(_Toy(10, 8), range(10), ways=3, shots=3, queries=4, transforms=(shuffle_examples, record))
    e = mixed.sample(np.random.default_rng(2))
    ref = plain.sample(np.random.default_rng(2))
    assert e.classes == ref.classes and seen == [e.query_y.tolist()] and seen[0] != sorted(seen[0])
    for label, cls in enumerate(e.classes):
        assert (e.query_x[e.query_y == label][:, 0] == cls).all()
        assert (e.support_x[e.support_y == label][:, 0] == cls).all()
    assert sorted(e.query_x[:, 1].tolist()) == sorted(ref.query_x[:, 1].tolist())


def test_bad_requests_fail_with_the_fix() -> None:
    with pytest.raises(ValueError, match="6 ways but the train split has only 5 classes; choose --ways <= 5"):
        EpisodeSampler(_Toy(), range(5), ways=6, shots=1, queries=1, where="the train split")
    with pytest.raises(ValueError, match=r"shots \+ queries = 4 \+ 3 = 7.*only 6 examples.*lower --shots or --queries"):
        EpisodeSampler(_Toy(), range(5), ways=2, shots=4, queries=3)
    with pytest.raises(ValueError, match="ways >= 1, shots >= 1"):
        EpisodeShape(0, 1, 1)
    with pytest.raises(ValueError, match="share 1 classes"):
        EpisodeSource(_Toy(), {"train": np.arange(5), "test": np.arange(4, 8)}, EpisodeShape(2, 1, 1),
                      EpisodeShape(2, 1, 1))


def test_source_uses_the_training_shape_for_train_and_the_test_shape_elsewhere() -> None:
    src = EpisodeSource(_Toy(12), {"train": np.arange(8), "val": np.arange(8, 10), "test": np.arange(10, 12)},
                        EpisodeShape(4, 2, 1), EpisodeShape(2, 1, 3))
    [train] = src.sample_tasks(1, np.random.default_rng(0), "train")
    [test] = src.sample_tasks(1, np.random.default_rng(0), "test")
    assert (train.ways, train.shots, train.queries) == (4, 2, 1) and set(train.classes) <= set(range(8))
    assert (test.ways, test.shots, test.queries) == (2, 1, 3) and set(test.classes) == {10, 11}
    assert src.held_out_split == "val"
    with pytest.raises(ValueError, match="split must be one of"):
        src.sample_tasks(1, np.random.default_rng(0), "ood")


@pytest.mark.skipif(not (DATA / "images_background_small1.zip").exists(), reason=f"no Omniglot data at {DATA}")
def test_omniglot_episodes(tmp_path_factory: pytest.TempPathFactory) -> None:
    from metarl.data.omniglot import load_omniglot

    data = load_omniglot(DATA, ("images_background_small1",), cache_dir=tmp_path_factory.getbasetemp() /
                         "omniglot-cache")
    split = data.split("random", 0)
    src = EpisodeSource(data, split, EpisodeShape(20, 5, 5), EpisodeShape(5, 1, 15), name="omniglot")
    [e] = src.sample_tasks(1, np.random.default_rng(0), "test")
    assert e.support_x.shape == (5, 1, 28, 28) and e.query_x.shape == (75, 1, 28, 28)
    assert e.support_x.dtype == torch.float32 and e.support_y.dtype == torch.long
    assert set(e.classes) <= set(split["test"].tolist())
    [t] = src.sample_tasks(1, np.random.default_rng(0), "train")
    assert t.support_x.shape == (100, 1, 28, 28) and set(t.classes) <= set(split["train"].tolist())


# ---------------------------------------------------------------------------------------------- sinusoid


def test_sinusoid_episodes_follow_the_maml_definition() -> None:
    src = SinusoidTasks(shots=5, queries=100)
    rng = np.random.default_rng(0)
    train = src.sample_tasks(200, rng, "train")
    e = train[0]
    assert e.support_x.shape == (5, 1) and e.query_x.shape == (5, 1)  # MAML's code: K and K in training
    [t] = src.sample_tasks(1, rng, "test")
    assert t.support_x.shape == (5, 1) and t.query_x.shape == (100, 1) and t.ways == 0
    xs = torch.cat([x.support_x for x in train])
    assert float(xs.min()) >= -5.0 and float(xs.max()) <= 5.0
    # The targets are A sin(x - phi) of one (A, phi) in range: recover them from two points by hand.
    x, y = t.query_x[:, 0].double().numpy(), t.query_y[:, 0].double().numpy()
    coef, *_ = np.linalg.lstsq(np.stack([np.sin(x), np.cos(x)], 1), y, rcond=None)  # A cos(phi), -A sin(phi)
    amplitude, phase = math.hypot(*coef), math.atan2(-coef[1], coef[0])
    assert 0.1 <= amplitude <= 5.0 and 0.0 <= phase <= math.pi
    np.testing.assert_allclose(amplitude * np.sin(x - phase), y, atol=1e-5)


def test_sinusoid_splits_never_share_a_task_and_are_seeded() -> None:
    rng = np.random.default_rng(1)
    tasks = [sample_sinusoid(rng) for _ in range(2000)]
    share = np.mean([task_split(t) == "test" for t in tasks])
    assert 0.17 < share < 0.23
    a = SinusoidTasks(5).sample_tasks(3, np.random.default_rng(9), "test")
    b = SinusoidTasks(5).sample_tasks(3, np.random.default_rng(9), "test")
    assert all(torch.equal(x.query_y, y.query_y) for x, y in zip(a, b, strict=True))
    task = SinusoidTask(amplitude=2.0, phase=0.5)
    assert task(np.array([0.5]))[0] == 0.0 and SinusoidTask.from_json(task.to_json()) == task
    with pytest.raises(ValueError, match="no out-of-distribution"):
        SinusoidTasks(5).sample_tasks(1, np.random.default_rng(0), "ood")
