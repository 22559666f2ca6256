"""Environment stepping throughput: each built-in family's NumPy-batched twin vs SyncVectorEnv.

For every id in ``metarl.envs.ENV_IDS`` and ``num_envs`` in (8, 64, 1024), this times

- the batched twin, ``gymnasium.make_vec(id, num_envs=N, vectorization_mode="vector_entry_point")``, and
- ``gymnasium.vector.SyncVectorEnv`` of N single envs (the unwrapped env class, no ``gymnasium.make``
  wrappers: the fastest honest Python-loop baseline),

both with per-env tasks set (``sample_tasks(N, default_rng(0))``), on the same pre-generated random
actions (a seeded ``numpy.random.Generator``, valid for the action space), over a fixed number of steps
after a warm-up, autoresets included. Each measurement is repeated (batched and sync interleaved, so
drift on the shared host hits both) and reported as median, min and max steps/s; ``ratio`` is the
median batched / median sync. The anchor row is Gymnasium's own NumPy-batched CartPole (SPEED.md: a
batched CartPoleDynamics must step at least as fast). Target (issue): batched >= 50x sync at 64 and
1024 envs.

and, at 8 and 64 envs, ``gymnasium.vector.AsyncVectorEnv`` of the same single envs (one worker process
per env, forked, shared-memory observations) on a shorter budget (``ASYNC_ENV_STEPS`` env-steps per
repeat: it is IPC-bound, each step is a round trip to every worker). At 1024 envs it is not run: 1024
worker processes on a 2-core, 24 GiB machine measure the scheduler, not the library.

Usage::

    python benchmarks/env_throughput.py                # full run (~1-2 min on 2 cores)
    python benchmarks/env_throughput.py --quick --out /tmp/t.json   # smoke test (seconds)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.envs.registration import load_env_creator

from metarl.envs import ENV_IDS
from metarl.provenance import write_results

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "env_throughput.json"
ANCHOR_ID = "CartPole-v1"
TARGET_RATIO = 50.0
TARGET_NUM_ENVS = (64, 1024)
ASYNC_MAX_ENVS = 64
ASYNC_ENV_STEPS = 20_000


def random_actions(space: spaces.Space, steps: int, num_envs: int, rng: np.random.Generator) -> np.ndarray:
    """``[steps, num_envs, *shape]`` actions drawn uniformly from a single-env action ``space``."""
    if isinstance(space, spaces.Box):
        low = np.broadcast_to(space.low, space.shape)
        high = np.broadcast_to(space.high, space.shape)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"cannot draw uniform actions from an unbounded Box {space}")
        return rng.uniform(low, high, size=(steps, num_envs, *space.shape)).astype(space.dtype)
    if isinstance(space, spaces.Discrete):
        return (space.start + rng.integers(0, space.n, size=(steps, num_envs))).astype(space.dtype)
    if isinstance(space, spaces.MultiDiscrete):
        return (space.start + rng.integers(0, space.nvec, size=(steps, num_envs, *space.shape))).astype(space.dtype)
    if isinstance(space, spaces.MultiBinary):
        return rng.integers(0, 2, size=(steps, num_envs, *space.shape)).astype(space.dtype)
    raise NotImplementedError(f"no random-action generator for {type(space).__name__}")


def time_steps(env: gymnasium.vector.VectorEnv, actions: np.ndarray, warmup: int) -> float:
    """Steps per second (``num_envs`` * steps / seconds) over ``actions[warmup:]`` after ``actions[:warmup]``."""
    for a in actions[:warmup]:
        env.step(a)
    timed = actions[warmup:]
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for a in timed:
            env.step(a)
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return env.num_envs * len(timed) / elapsed


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _with_task(single: Callable[[], gymnasium.Env], task: Any) -> Callable[[], gymnasium.Env]:
    def make() -> gymnasium.Env:
        env = single()
        env.unwrapped.set_task(task)
        return env

    return make


def build_envs(env_id: str, num_envs: int, with_async: bool) -> tuple[gymnasium.vector.VectorEnv, ...]:
    """``(batched twin, SyncVectorEnv[, AsyncVectorEnv])`` for ``env_id`` with the same per-env tasks,
    all reset with seed 0."""
    batched = gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    if env_id == ANCHOR_ID:
        # CartPole-v1's horizon lives in the TimeLimit wrapper that gymnasium.make adds.
        def single() -> gymnasium.Env:
            return gymnasium.make(env_id, disable_env_checker=True)
    else:
        creator: Callable[..., gymnasium.Env] = load_env_creator(gymnasium.spec(env_id).entry_point)
        single = creator
    if hasattr(batched, "sample_tasks"):
        tasks = batched.sample_tasks(num_envs, np.random.default_rng(0))
        batched.set_tasks(tasks)
        fns = [_with_task(single, task) for task in tasks]
    else:
        fns = [single for _ in range(num_envs)]
    envs = [batched, gymnasium.vector.SyncVectorEnv(fns)]
    if with_async:
        envs.append(gymnasium.vector.AsyncVectorEnv(fns, shared_memory=True, context="fork"))
    for env in envs:
        env.reset(seed=0)
    return tuple(envs)


def bench_one(env_id: str, num_envs: int, steps: int, warmup: int, repeats: int,
              async_steps: int = 0) -> dict[str, Any]:
    """One row; ``async_steps`` > 0 adds AsyncVectorEnv (timed over that many steps) up to ``ASYNC_MAX_ENVS``."""
    row: dict[str, Any] = {"env_id": env_id, "num_envs": num_envs, "steps_timed": steps, "warmup_steps": warmup,
                           "repeats": repeats}
    with_async = async_steps > 0 and num_envs <= ASYNC_MAX_ENVS
    envs: tuple[gymnasium.vector.VectorEnv, ...] = ()
    try:
        envs = build_envs(env_id, num_envs, with_async)
        batched, sync = envs[:2]
        if batched.single_action_space != sync.single_action_space:
            raise RuntimeError(f"action spaces differ: batched {batched.single_action_space}, "
                               f"sync {sync.single_action_space}")
        rng = np.random.default_rng(12345)
        actions = random_actions(sync.single_action_space, warmup + steps, num_envs, rng)
        a_warmup = max(2, async_steps // 10)
        b_rates, s_rates, a_rates = [], [], []
        for _ in range(repeats):
            b_rates.append(time_steps(batched, actions, warmup))
            s_rates.append(time_steps(sync, actions, warmup))
            if with_async:
                a_rates.append(time_steps(envs[2], actions[: a_warmup + async_steps], a_warmup))
    except Exception as exc:  # a benchmark records a broken env and goes on with the others
        return {**row, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    finally:
        for env in envs:
            env.close()
    b, s = summary(b_rates), summary(s_rates)
    ratio = b["median"] / s["median"]
    row.update(status="ok", batched_steps_per_s=b, sync_steps_per_s=s, ratio=ratio)
    if with_async:
        a = summary(a_rates)
        row.update(async_steps_timed=async_steps, async_steps_per_s=a, ratio_vs_async=b["median"] / a["median"])
    if env_id != ANCHOR_ID and num_envs in TARGET_NUM_ENVS:
        row["meets_target"] = bool(ratio >= TARGET_RATIO)
    return row


def importable(env_id: str) -> str | None:
    """``None`` if both entry points of ``env_id`` load, else the error string."""
    spec = gymnasium.spec(env_id)
    try:
        load_env_creator(spec.entry_point)
        load_env_creator(spec.vector_entry_point)
    except Exception as exc:  # missing module, missing class, or an error inside the module
        return f"{type(exc).__name__}: {exc}"
    return None


def fmt(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _async_cells(r: dict[str, Any]) -> str:
    if "async_steps_per_s" not in r:
        return "not run | "
    a = r["async_steps_per_s"]
    return f"{fmt(a['median'])} [{fmt(a['min'])}, {fmt(a['max'])}] | {r['ratio_vs_async']:.0f}x"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| env | num_envs | batched steps/s (median [min, max]) | SyncVectorEnv steps/s | batched / sync "
             "| AsyncVectorEnv steps/s | batched / async |",
             "| --- | ---: | --- | --- | ---: | --- | ---: |"]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['env_id']} | {r.get('num_envs', '-')} | {r['status']}: {r['error']} | | | | |")
            continue
        b, s = r["batched_steps_per_s"], r["sync_steps_per_s"]
        mark = "" if "meets_target" not in r else (" ✓" if r["meets_target"] else " ✗")
        lines.append(f"| {r['env_id']} | {r['num_envs']} | {fmt(b['median'])} [{fmt(b['min'])}, {fmt(b['max'])}] "
                     f"| {fmt(s['median'])} [{fmt(s['min'])}, {fmt(s['max'])}] | {r['ratio']:.0f}x{mark} "
                     f"| {_async_cells(r)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny run for a smoke test (seconds)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)

    if args.quick:
        sizes, repeats, env_steps, min_steps, async_env_steps = (8, 64), 1, 2_000, 20, 640
    else:
        # ~150k env-steps per measurement: about 1 s at SyncVectorEnv speed on these machines (~1 min in all).
        sizes, repeats, env_steps, min_steps, async_env_steps = (8, 64, 1024), 5, 150_000, 100, ASYNC_ENV_STEPS

    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for env_id in [ANCHOR_ID, *ENV_IDS]:
        error = None if env_id == ANCHOR_ID else importable(env_id)
        if error is not None:
            rows.append({"env_id": env_id, "status": "skipped", "error": error})
            continue
        for n in sizes:
            steps = max(min_steps, env_steps // n)
            rows.append(bench_one(env_id, n, steps, warmup=max(5, steps // 10), repeats=repeats,
                                  async_steps=max(min_steps, async_env_steps // n)))
    wall = time.perf_counter() - start

    payload = {
        "benchmark": "env_throughput",
        "description": "steps/s with random actions: NumPy-batched twin (make_vec, vector_entry_point) vs "
                       "SyncVectorEnv of single envs, per-env tasks set, autoresets included",
        "quick": args.quick,
        "num_envs": list(sizes),
        "target": {"ratio_at_least": TARGET_RATIO, "num_envs": list(TARGET_NUM_ENVS),
                   "source": "issue: batched >= 50x SyncVectorEnv at 64 and 1024 envs"},
        "anchor": f"{ANCHOR_ID}: Gymnasium's own NumPy-batched CartPole vs SyncVectorEnv of gymnasium.make "
                  "(TimeLimit + OrderEnforcing, env checker off); SPEED.md: CartPoleDynamics must step at least "
                  "as fast as its batched row",
        "sync_baseline": "metarl ids: SyncVectorEnv of the unwrapped env class (no gymnasium.make wrappers)",
        "async_baseline": f"AsyncVectorEnv of the same single envs (fork, shared memory) up to {ASYNC_MAX_ENVS} envs, "
                          f"{async_env_steps} env-steps per repeat; not run at 1024 envs (1024 worker processes "
                          "on 2 cores)",
        "rows": rows,
    }
    write_results(args.out, payload, wall_time_s=wall)
    print(markdown_table(rows))
    print(f"\nwrote {args.out} ({wall:.0f} s)")


if __name__ == "__main__":
    main()
