"""Counter-based random numbers that give identical streams in single and batched environments.

A single env and its batched twin must produce the same transitions for the same seeds. NumPy
cannot draw from 1024 different ``Generator`` objects in one vectorised call, so in-episode
randomness (bandit rewards, MDP transitions, CartPole initial states) is a pure function of a
per-env 64-bit key (fixed by ``reset(seed=...)``) and a per-env draw counter. The hash is
SplitMix64 (Steele et al. 2014), applied twice; its output is turned into a float in [0, 1) from
the top 53 bits. The function works elementwise on arrays, so a batch of envs draws in one call.
"""

from __future__ import annotations

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
