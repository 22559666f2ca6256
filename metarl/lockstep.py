"""Bookkeeping of batched envs whose sub-envs all end their episodes after the same number of steps.

The batched bandit (:mod:`metarl.envs.bandit`) and tabular-MDP (:mod:`metarl.envs.tabular_mdp`) envs
share their episode clock: every sub-env truncates after ``horizon`` steps, NEXT_STEP autoreset (the
step after an episode ends resets that sub-env, ignores its action, draws nothing and returns reward 0
with both flags ``False``), and each real step consumes ``draws_per_step`` numbers of the sub-env's
counter-RNG stream (:mod:`metarl.rng`). :class:`LockstepClock` holds that state and the three moves of
a step, so each env's ``step`` keeps only its own transition::

    a = clock.begin(actions, n_actions, "arm indices")      # validate; None: every sub-env resets now
    noise = clock.noise(fresh_draws)                       # this step's draws, [N, draws_per_step]
    ... the env's transition ...
    terminated, truncated = clock.end(reward)              # t, counters and autoreset flags advance

Sub-envs normally reset together (they share the horizon), so a step is usually all-live or
all-resetting; the mixed case (reachable when sub-envs are desynchronised by hand) is exact too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from metarl.rng import UniformBlocks, rekey

FloatArray = npt.NDArray[np.float64]


class LockstepClock:
    """Step counters, autoreset flags and counter-RNG streams of ``num_envs`` fixed-horizon sub-envs.

    Args:
        num_envs: sub-envs.
        horizon: steps per episode (every sub-env truncates there).
        draws_per_step: counter numbers a real step consumes per sub-env.
        transform: applied to the draws of each step (e.g. uniforms to normal noise); see
            :class:`metarl.rng.UniformBlocks`.
        name: the env's class name, for the error raised by a step before reset.

    Attributes (read by the env): ``t [N]`` steps into the current episode; ``resetting [N]`` bool, which
    sub-envs autoreset at this step; ``live`` the ``[N]`` mask of sub-envs taking a real step, or
    ``None`` when all of them do; ``keys`` / ``counters [N]`` uint64 stream state.
    """

    def __init__(self, num_envs: int, horizon: int, draws_per_step: int,
                 transform: Callable[[FloatArray], FloatArray] | None = None, name: str = "env") -> None:
        self.num_envs, self.horizon, self.draws_per_step, self.name = num_envs, horizon, draws_per_step, name
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.resetting = np.zeros(num_envs, dtype=np.bool_)
        self.live: npt.NDArray[np.bool_] | None = None
        self._any_reset = False
        self._started = False
        self.draws = UniformBlocks(draws_per_step=draws_per_step, transform=transform)
        self.keys = np.zeros(num_envs, dtype=np.uint64)
        self.has_key = np.zeros(num_envs, dtype=np.bool_)
        self.counters = np.zeros(num_envs, dtype=np.uint64)

    def reset(self, seeds: Sequence[int | None], rng: np.random.Generator) -> None:
        """Every sub-env starts an episode; seeded ones (``seeds`` from :func:`metarl.rng.batch_seeds`)
        restart their stream, unseeded ones continue it (``rng``: where a first key comes from)."""
        self.counters[rekey(seeds, self.keys, self.has_key, rng)] = 0
        self.t[:] = 0
        self.resetting = np.zeros(self.num_envs, dtype=np.bool_)
        self._any_reset = False
        self.draws.invalidate()
        self._started = True

    def begin(self, actions: npt.ArrayLike, n_actions: int, what: str) -> npt.NDArray[np.int64] | None:
        """Validate this step's ``actions`` (ints in ``[0, n_actions)``, ``what`` names them in the error).

        Returns the actions with those of autoresetting sub-envs replaced by 0 (their action is ignored,
        even out of range, as ``SyncVectorEnv`` does), or ``None`` when every sub-env autoresets at this
        step: the clock has then done the whole step (``t`` and the flags cleared, nothing drawn) and the
        env returns its reset observations with reward 0 and both flags ``False``.
        """
        if not self._started:
            raise RuntimeError(f"{self.name}.step() called before reset(); call envs.reset() first")
        a = np.asarray(actions)
        if a.shape != (self.num_envs,) or a.dtype.kind not in "iu":
            raise ValueError(f"actions must be ints of shape ({self.num_envs},), got {a.dtype} of shape {a.shape}")
        self.live = None
        if self._any_reset:
            if self.resetting.all():
                self.t[:] = 0
                self.resetting = np.zeros(self.num_envs, dtype=np.bool_)
                self._any_reset = False
                return None
            live = ~self.resetting
            if ((a < 0) | (a >= n_actions))[live].any():
                raise ValueError(f"actions must be {what} in [0, {n_actions}), got {a.tolist()}")
            self.live = live
            return np.where(live, a, 0)
        if a.min() < 0 or a.max() >= n_actions:
            raise ValueError(f"actions must be {what} in [0, {n_actions}), got {a.tolist()}")
        return a

    def noise(self, fresh: Callable[[npt.NDArray[np.uint64], npt.NDArray[np.uint64]], FloatArray]) -> FloatArray:
        """This step's ``[N, draws_per_step]`` draws (transformed): from the block drawn ahead, or, on a step
        where some sub-envs autoreset (their counters then advance unevenly), from ``fresh(keys, counters)``,
        which must give the same numbers as the block would."""
        if self.live is not None:
            return fresh(self.keys, self.counters)
        if self.draws.exhausted:
            self.draws.refill(self.keys, self.counters, self.horizon - int(self.t.max()))
        return self.draws.pop()

    def end(self, reward: FloatArray) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Finish a real step: advance ``t`` and the counters, zero ``reward`` (in place) of autoresetting
        sub-envs, and set the autoreset flags of the next step. Returns ``(terminated, truncated)``."""
        self.t += 1
        truncated = self.t >= self.horizon
        terminated = np.zeros(self.num_envs, dtype=np.bool_)
        if self.live is not None:
            self.counters += self.live.astype(np.uint64) * np.uint64(self.draws_per_step)
            self.draws.invalidate()  # counters advanced unevenly
            self.t[self.resetting] = 0
            reward[self.resetting] = 0.0
            truncated[self.resetting] = False
        else:
            self.counters += np.uint64(self.draws_per_step)
        self.resetting = truncated.copy()  # a copy: the returned flags must never change afterwards
        self._any_reset = bool(truncated.any())
        return terminated, truncated
