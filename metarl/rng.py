"""Counter-based random numbers that give identical streams in single and batched environments.

A single env and its batched twin must produce the same transitions for the same seeds. NumPy
cannot draw from 1024 different ``Generator`` objects in one vectorised call, so in-episode
randomness (bandit rewards, MDP transitions, CartPole initial states) is a pure function of a
per-env 64-bit key (fixed by ``reset(seed=...)``) and a per-env draw counter. The hash is
SplitMix64 (Steele et al. 2014), applied twice; its output is turned into a float in [0, 1) from
the top 53 bits. The function works elementwise on arrays, so a batch of envs draws in one call.

Shared by the envs too: the seeding rule of ``reset(seed=...)`` (:func:`reset_stream` for a single env;
:func:`batch_seeds` and :func:`rekey` for the sub-envs of a batched twin) and drawing the uniforms of the
coming steps a block at a time (:class:`UniformBlocks`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_M1 = _U64(0xBF58476D1CE4E5B9)
_M2 = _U64(0x94D049BB133111EB)


def splitmix64(x: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """SplitMix64 finaliser of ``x + golden`` (elementwise, wrapping uint64 arithmetic)."""
    z = np.asarray(x, dtype=np.uint64) + _GOLDEN
    with np.errstate(over="ignore"):
        z = (z ^ (z >> _U64(30))) * _M1
        z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


def key_from_seed(seed: npt.ArrayLike) -> npt.NDArray[np.uint64]:
    """The stream key of an env reset with ``seed`` (a non-negative int, or an array of them)."""
    return splitmix64(np.asarray(seed, dtype=np.int64).astype(np.uint64))


def uniform(key: npt.ArrayLike, counter: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Uniform floats in [0, 1), one per (key, counter) pair (broadcast elementwise)."""
    k = np.asarray(key, dtype=np.uint64)
    c = np.asarray(counter, dtype=np.uint64)
    with np.errstate(over="ignore"):
        bits = splitmix64(splitmix64(k ^ (c * _GOLDEN)) + c)
    return (bits >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def reset_stream(seed: int | None, key: npt.NDArray[np.uint64] | None, counter: int,
                 rng: np.random.Generator) -> tuple[npt.NDArray[np.uint64], int]:
    """The ``(key, counter)`` of a single env after ``reset(seed=seed)``.

    A seed gives ``(key_from_seed(seed), 0)``; no seed keeps the stream (``key``, ``counter``) so the episodes of a
    trial see fresh draws, unless there is no key yet: then the key of a seed drawn from ``rng`` (the env's
    ``np_random``, seeded by ``super().reset``). :func:`rekey` applies the same rule to each sub-env of a batch.
    """
    if seed is not None:
        return key_from_seed(seed), 0
    if key is None:
        return key_from_seed(int(rng.integers(0, 2**62))), 0
    return key, counter


def batch_seeds(seed: int | np.integer | Sequence[int | np.integer | None] | None,
                num_envs: int) -> list[int | None]:
    """The seed of each sub-env for a batched ``reset(seed=seed)``, read as ``gymnasium.vector.SyncVectorEnv`` does.

    ``None``: every sub-env unseeded (it continues its stream); an int ``s``: sub-env ``i`` gets ``s + i``;
    a sequence: one seed (a non-negative int, or ``None`` to leave that sub-env unseeded) per sub-env.
    A batched env seeds its own ``np_random`` with ``seeds[0]`` (``super().reset(seed=seeds[0])``), as
    SyncVectorEnv's sub-env 0 is seeded, so after a reset that seeds every sub-env ``sample_tasks(rng=None)``
    draws the same tasks as ``metarl.tasks.TaskSyncVectorEnv`` (which samples with sub-env 0).

    Returns:
        ``[num_envs]`` Python ints or ``None``.
    """
    if seed is None:
        return [None] * num_envs
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, None, or a list of them, got {seed!r}")
        return [int(seed) + i for i in range(num_envs)]
    try:
        seeds = list(seed)  # type: ignore[arg-type]  # anything else iterable is checked below
    except TypeError:
        raise ValueError(f"seed must be an int, None, or a list of {num_envs} ints/None, got {seed!r}") from None
    if len(seeds) != num_envs:
        raise ValueError(f"seed must be an int, None, or one seed per sub-env: a list of {num_envs} ints/None, "
                         f"got {len(seeds)} seeds")
    bad = [s for s in seeds if s is not None and (isinstance(s, bool) or not isinstance(s, (int, np.integer))
                                                    or s < 0)]
    if bad:
        raise ValueError(f"each seed in a list must be a non-negative int or None, got {bad[0]!r} in {seeds!r}")
    return [None if s is None else int(s) for s in seeds]


def rekey(seeds: Sequence[int | None], keys: npt.NDArray[np.uint64], has_key: npt.NDArray[np.bool_],
          rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Set the stream keys of a batched reset in place; returns the ``[N]`` mask of sub-envs whose counters restart.

    The single env's rule, per sub-env: a seeded sub-env gets ``key_from_seed(seed)``; an unseeded one keeps its
    key (its stream continues) unless it has none yet, when it gets the key of a seed drawn from ``rng`` (the
    batched env's ``np_random``; one draw per such sub-env, in sub-env order, none when every sub-env is seeded).

    Args:
        seeds: ``[N]`` from :func:`batch_seeds`.
        keys: ``[N]`` uint64 keys, updated in place.
        has_key: ``[N]`` bool, which sub-envs have a key; updated in place.
        rng: where the seeds of fresh keys come from.
    """
    seeded = np.fromiter((s is not None for s in seeds), dtype=np.bool_, count=len(seeds))
    values = np.fromiter((0 if s is None else s for s in seeds), dtype=np.int64, count=len(seeds))
    fresh = ~seeded & ~has_key
    if fresh.any():
        values[fresh] = rng.integers(0, 2**62, size=int(fresh.sum()))
    rekeyed = seeded | fresh
    keys[rekeyed] = key_from_seed(values[rekeyed])
    has_key[rekeyed] = True
    return rekeyed


class UniformBlocks:
    """Counter-RNG uniforms for the coming steps of a batch of envs, drawn a block of steps at a time.

    The draws are a pure function of (key, counter), so a block computed ahead gives exactly the numbers that
    per-step ``uniform(keys, counters + j)`` calls would, at a fraction of their per-call overhead, which
    dominates at small batches. Valid while every env's counter advances by exactly ``draws_per_step`` per
    step; the owner calls :meth:`invalidate` whenever counters move otherwise (reset, autoreset steps).
    Used by the batched bandit and tabular-MDP envs.

    Args:
        draws_per_step: counters each env consumes per step.
        max_elements: bound on the block size ``num_envs * steps * draws_per_step`` (at most 64 steps).
        transform: an elementwise-per-step function applied to each whole block ``[N, steps, draws_per_step]``
            (e.g. turning uniforms into normal noise), so that work is batched too; it must give every step the
            same numbers as applying it to that step's ``[N, draws_per_step]`` uniforms alone.

    Example::

        >>> keys, counters = key_from_seed(np.arange(2)), np.zeros(2, dtype=np.uint64)
        >>> blocks = UniformBlocks(draws_per_step=1)
        >>> blocks.refill(keys, counters, steps_left=3)
        >>> [bool((blocks.pop()[:, 0] == uniform(keys, counters + j)).all()) for j in range(3)]
        [True, True, True]
        >>> blocks.exhausted
        True
    """

    def __init__(self, draws_per_step: int, max_elements: int = 8192,
                 transform: Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]] | None = None) -> None:
        self.draws_per_step = draws_per_step
        self.max_elements = max_elements
        self.transform = transform
        self._block: npt.NDArray[np.float64] | None = None
        self._pos = 0

    def invalidate(self) -> None:
        self._block = None

    @property
    def exhausted(self) -> bool:
        """True when :meth:`refill` must be called before the next :meth:`pop`."""
        return self._block is None or self._pos >= self._block.shape[1]

    def refill(self, keys: npt.NDArray[np.uint64], counters: npt.NDArray[np.uint64], steps_left: int) -> None:
        """Draw the block for the current step's ``counters`` and the following steps.

        ``steps_left``: steps until the next possible autoreset; the block never reaches past it (it would be
        invalidated there anyway).
        """
        n, d = counters.shape[0], self.draws_per_step
        steps = max(1, min(64, self.max_elements // (n * d), steps_left))
        offsets = np.arange(steps * d, dtype=np.uint64)
        block = uniform(keys[:, None], counters[:, None] + offsets).reshape(n, steps, d)
        self._block = block if self.transform is None else self.transform(block)
        self._pos = 0

    def pop(self) -> npt.NDArray[np.float64]:
        """``[N, draws_per_step]`` uniforms (transformed, if given) of the current step (a view of the block)."""
        assert self._block is not None, "call refill() first"
        u = self._block[:, self._pos]
        self._pos += 1
        return u
