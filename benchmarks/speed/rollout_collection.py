"""RL rollout collection with a policy in the loop: metarl's batched collection vs Stable-Baselines3's.

Workload: ``n_envs`` environments stepped together for one horizon with an MLP policy (2x64 tanh, SB3's
default ``MlpPolicy`` size) choosing every action, on ``metarl/Navigation2D-v0`` (2-D Gaussian actions,
H = 100) and ``metarl/CartPoleDynamics-v0`` (2 discrete actions, H = 200), for ``n_envs`` in 8, 64, 1024.

- ``metarl``: :meth:`metarl.rollout.TaskEnvs.collect` (the batched twin, one policy call per step for all
  envs, a :class:`~metarl.types.TrajectoryBatch` of torch tensors), one task and one episode per env: the
  batch runs until its longest episode ends, and only real transitions are counted (CartPole episodes
  that fail early leave their column idle until then); also
  ``metarl + advantages``: the same plus :func:`metarl.pg.task_advantages` (linear baseline refit per
  task, GAE, normalisation), the work SB3 does in the same call with its critic; and
  ``metarl packed + advantages``: ``TaskEnvs(episodes_per_env=8)``, i.e. 8 complete episodes of each env's
  task run back to back on that env through its autoreset (:func:`metarl.rollout.collect_packed_episodes`,
  ``metarl train --episodes-per-env 8``), so an early-ending episode no longer idles its env.
- ``sb3``: ``PPO.collect_rollouts`` of Stable-Baselines3 on a ``DummyVecEnv`` of the single env (what an
  SB3 user runs), policy and value forward at every step, GAE at the end; one horizon per env.

Both use one torch thread. Each measurement is repeated (implementations interleaved, so drift on a shared
host hits all of them) and reported as median / min / max steps per second; ``ratio`` is metarl's median
over SB3's, per round. Target (issue): metarl >= SB3 on the same env and policy size.

Run: ``python benchmarks/speed/rollout_collection.py`` (a few minutes) or ``--quick`` (seconds).
Results: ``benchmarks/results/speed_rollout.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS as RESULTS_DIR  # noqa: E402
from common import fmt_rate, load_average, machine_line, paired_ratios, peak_rss_mb, write_and_print  # noqa: E402

from metarl.pg import task_advantages  # noqa: E402
from metarl.policies import make_policy  # noqa: E402
from metarl.registry import make_env  # noqa: E402
from metarl.rollout import TaskEnvs, task_policy_act_fn  # noqa: E402

RESULTS = RESULTS_DIR / "speed_rollout.json"
ENVS = ("metarl/Navigation2D-v0", "metarl/CartPoleDynamics-v0")


PACKED = 8  # episodes per env of the packed collector (SB3's horizon of CartPole steps holds ~8 of its early episodes)


def metarl_collector(env_id: str, n_envs: int, advantages: bool, episodes_per_env: int = 1) -> Callable[[int], int]:
    envs = TaskEnvs(env_id, episodes_per_env=episodes_per_env)
    policy = make_policy(envs.observation_space, envs.action_space, (64, 64), "tanh")
    tasks = envs.sample_tasks(n_envs, np.random.default_rng(0))
    act = task_policy_act_fn(policy, None, n_envs)

    def run(seed: int) -> int:
        batch = envs.collect(act, tasks, episodes_per_env, seed)  # n_envs sub-envs: one per task
        if advantages:
            task_advantages(batch, n_envs, 0.99, 0.97)
        return batch.num_steps

    return run


def sb3_collector(env_id: str, n_envs: int) -> Callable[[int], int]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CallbackList
    from stable_baselines3.common.vec_env import DummyVecEnv

    probe = make_env(env_id)
    tasks = probe.unwrapped.sample_tasks(n_envs, rng=np.random.default_rng(0))  # type: ignore[attr-defined]

    def factory(i: int) -> Callable[[], gymnasium.Env]:
        def make() -> gymnasium.Env:
            env = make_env(env_id)
            env.unwrapped.set_task(tasks[i])  # type: ignore[attr-defined]
            return env
        return make

    horizon = int(probe.unwrapped.horizon)  # type: ignore[attr-defined]
    model = PPO("MlpPolicy", DummyVecEnv([factory(i) for i in range(n_envs)]), n_steps=horizon,
                batch_size=horizon * n_envs, policy_kwargs=dict(net_arch=[64, 64]), device="cpu", verbose=0)
    model._setup_learn(total_timesteps=10**9)
    callback = CallbackList([])
    callback.init_callback(model)

    def run(seed: int) -> int:
        assert model.env is not None
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=horizon)
        return horizon * n_envs

    return run


def measure(collectors: dict[str, Callable[[int], int]], repeats: int) -> dict[str, list[float]]:
    """Steps/s of each collector per round: one warm-up call, then ``repeats`` rounds, collectors interleaved
    in a rotating order."""
    rates: dict[str, list[float]] = {name: [] for name in collectors}
    for run in collectors.values():
        run(0)
    names = list(collectors)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps = collectors[name](r + 1)
            rates[name].append(steps / (time.perf_counter() - t0))
    return rates


def spread(v: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    wall = time.perf_counter()
    load_before = load_average()
    sizes = (4,) if args.quick else (8, 64, 1024)
    repeats = args.repeats or (1 if args.quick else 5)
    out = args.out or (Path(tempfile.mkdtemp()) / "speed_rollout.json" if args.quick else RESULTS)
    rows = []
    for env_id in ENVS:
        for n in sizes:
            rates = measure({"metarl": metarl_collector(env_id, n, False),
                             "metarl + advantages": metarl_collector(env_id, n, True),
                             "metarl packed + advantages": metarl_collector(env_id, n, True, PACKED),
                             "sb3": sb3_collector(env_id, n)}, repeats)
            stats = {name: spread(v) for name, v in rates.items()}
            # steps/s of metarl over SB3's, per round (collected back to back)
            ratio = paired_ratios(rates["metarl packed + advantages"], rates["sb3"])
            rows.append({"env_id": env_id, "n_envs": n, "steps_per_s": stats, "ratio_vs_sb3": ratio,
                         "ratio_one_episode_per_env_vs_sb3": paired_ratios(rates["metarl + advantages"], rates["sb3"]),
                         "ratio_collect_only_vs_sb3": paired_ratios(rates["metarl"], rates["sb3"])})
            print(f"{env_id:28s} {n:5d} envs: metarl {stats['metarl']['median']:10.0f}  "
                  f"+adv {stats['metarl + advantages']['median']:10.0f}  "
                  f"packed+adv {stats['metarl packed + advantages']['median']:10.0f}  "
                  f"sb3 {stats['sb3']['median']:8.0f} "
                  f"steps/s  ({ratio['median']:.1f}x)", flush=True)
    payload = {"benchmark": "speed_rollout", "quick": args.quick, "repeats": repeats, "threads": 1,
               "policy": "MLP 2x64 tanh",
               "packed_episodes_per_env": PACKED,
               "ratio": "metarl packed + advantages steps/s over SB3's, per round, then median/min/max over rounds",
               "memory": "peak RSS of the whole run (all collectors share one process)",
               "peak_rss_mb": peak_rss_mb(), "load_average": {"before": load_before, "after": load_average()},
               "target": "metarl >= SB3 steps/s on the same env and policy size", "rows": rows}
    write_and_print(out, payload, time.perf_counter() - wall, readme_table)
    return payload


def readme_table(d: dict[str, Any]) -> str:
    """The README's table: steps/s (medians) and the paired ratio metarl + advantages / SB3."""
    p = d["packed_episodes_per_env"]
    lines = ["### Rollout collection with a policy in the loop (steps/s, MLP 2x64 tanh, 1 thread; ratio = metarl "
             "packed + advantages / SB3, median [min, max])", "",
             f"`python benchmarks/speed/rollout_collection.py` ({machine_line(d)})", "",
             f"| env | envs | metarl, 1 episode/env | + advantages | packed, {p} episodes/env, + advantages | "
             "SB3 PPO collect_rollouts | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in d["rows"]:
        s, q = r["steps_per_s"], r["ratio_vs_sb3"]
        lines.append(f"| {r['env_id']} | {r['n_envs']} | {fmt_rate(s['metarl']['median'])} | "
                     f"{fmt_rate(s['metarl + advantages']['median'])} | "
                     f"{fmt_rate(s['metarl packed + advantages']['median'])} | {fmt_rate(s['sb3']['median'])} | "
                     f"{q['median']:.1f}x [{q['min']:.1f}, {q['max']:.1f}] |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
