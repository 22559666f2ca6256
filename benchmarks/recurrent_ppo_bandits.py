"""Baseline: sb3-contrib's RecurrentPPO (LSTM) on the RL² bandit task through a trial wrapper.

What do our memory agents add over the off-the-shelf recurrent PPO a reader would try first?
``TrialWrapper`` turns ``metarl/Bandit-v0`` into the RL² trial MDP for Stable-Baselines3: every reset
draws a new *train* bandit, one trial of ``n`` pulls is one SB3 episode, and the observation is the
RL² input ``[obs, one-hot previous action, previous reward, previous done]`` (the LSTM state is reset by
SB3 at episode = trial starts). The trial's end is a termination, as in ``agents/rl2.py``. Same
discount and GAE lambda as the committed RL² run, LSTM of the same width as its GRU.

Sample budget. The RL² run in ``benchmarks/results/rl2_bandits.json`` used millions of env steps;
RecurrentPPO steps one env at a time in Python (~66 env-steps/s in SPEED.md), so the same budget
would take days here. This script trains RecurrentPPO for ``--timesteps`` env steps, evaluates it on
the 1000 test bandits of ``benchmarks/bandit_baselines.py`` (same bandits, same reward stream; actions
sampled, as for RL²), and reads RL²'s training curve at the *same* number of env steps (the mean
trial return of RL²'s training iteration where its cumulative env steps first reach the budget; on
train bandits, so it is an estimate of the same expectation) together with RL²'s final test score and
both wall-clock throughputs.

Run::

    python benchmarks/recurrent_ppo_bandits.py --timesteps 200000
    python benchmarks/recurrent_ppo_bandits.py --quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from adaptation_common import machine_line

from metarl.envs.bandit import BanditEnv, BanditTask
from metarl.provenance import write_results
from metarl.stats import mean_ci95

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "recurrent_ppo_bandits.json"
RL2_RESULTS = HERE / "results" / "rl2_bandits.json"


class TrialWrapper(gymnasium.Wrapper):
    """One SB3 episode = one RL² trial of ``n_episodes`` inner episodes of one task; observations carry
    the previous action (one-hot), reward and done flag. ``sample_task()`` gives each trial's task."""

    def __init__(self, env: gymnasium.Env, sample_task: Callable[[], BanditTask] | None, n_episodes: int = 1) -> None:
        super().__init__(env)
        assert isinstance(env.action_space, gymnasium.spaces.Discrete)
        self.n_actions = int(env.action_space.n)
        self.sample_task, self.n_episodes = sample_task, n_episodes
        inner = int(np.prod(env.observation_space.shape or (1,)))
        self.observation_space = gymnasium.spaces.Box(-np.inf, np.inf, (inner + self.n_actions + 2,), np.float32)
        self.episodes = 0

    def _obs(self, obs: Any, action: int | None, reward: float, done: bool) -> np.ndarray:
        prev = np.zeros(self.n_actions, dtype=np.float32)
        if action is not None:
            prev[action] = 1.0
        return np.concatenate([np.asarray(obs, dtype=np.float32).ravel(), prev, [reward, float(done)]]).astype(
            np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        options = dict(options or {})
        if self.sample_task is not None:
            options["task"] = self.sample_task()
        obs, info = self.env.reset(seed=seed, options=options or None)
        self.episodes = 0
        return self._obs(obs, None, 0.0, False), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        a = int(action)
        obs, reward, terminated, truncated, info = self.env.step(a)
        ended = bool(terminated or truncated)
        if ended:
            self.episodes += 1
            if self.episodes < self.n_episodes:
                obs, _ = self.env.reset()  # no seed: the task's random streams continue inside the trial
        return self._obs(obs, a, float(reward), ended), float(reward), ended and self.episodes >= self.n_episodes, \
            False, info


def rl2_reference(n_pulls: int, n_arms: int, budget: float, wall_s: float) -> dict[str, Any] | None:
    """RL²'s committed run at the same setting: its training return after ``budget`` env steps and after
    ``wall_s`` seconds of training (the sum of its iteration times), and its final test score."""
    if not RL2_RESULTS.exists():
        return None
    entry = json.loads(RL2_RESULTS.read_text())["entries"].get(f"rl2_n{n_pulls}_k{n_arms}")
    if entry is None:
        return None
    steps, seconds, at_budget, at_wall = 0.0, 0.0, None, None
    per_iteration = entry["train_env_steps"] / max(entry["iterations"], 1)
    for row in entry["curve"]:
        steps += per_iteration
        seconds += row["time/iteration_s"]
        point = {"iteration": row["iteration"], "env_steps": steps, "train_s": seconds,
                 "train_return": row["rollout/return_mean"]}
        if at_budget is None and steps >= budget:
            at_budget = point
        if at_wall is None and seconds >= wall_s:
            at_wall = point
    return {"final_test": entry["result"], "train_env_steps": entry["train_env_steps"],
            "train_wall_time_s": entry["train_wall_time_s"], "env_steps_per_s": entry["env_steps_per_s"],
            "at_same_env_steps": at_budget, "at_same_wall_time": at_wall,
            "commit": (entry.get("provenance") or {}).get("commit")}


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``recurrent_ppo_bandits.json``."""
    r, ref = d["result"], d.get("rl2")
    s = d["setup"]
    heading = ["### sb3-contrib RecurrentPPO through a trial wrapper vs RL² (bandits)", "",
               f"`python benchmarks/recurrent_ppo_bandits.py` ({machine_line(d)})", ""]
    lines = [f"n = {s['n_pulls']} pulls, k = {s['n_arms']} arms, {s['test']['n_bandits']} test bandits "
             "(mean ± 95% CI)", "",
             "| learner | env steps | wall time | env-steps/s | total reward |", "| --- | --- | --- | --- | --- |",
             f"| sb3-contrib RecurrentPPO (LSTM {s['lstm_hidden_size']}) | {d['timesteps']:,} | "
             f"{d['train_wall_time_s'] / 60:.1f} min | {d['env_steps_per_s']:.0f} | "
             f"{r['mean']:.1f} ± {r['ci95']:.1f} |"]
    if ref:
        same = ref.get("at_same_env_steps")
        if same:
            lines.append(f"| RL² (ours), training return at the same env steps | {same['env_steps']:,.0f} | | | "
                         f"{same['train_return']:.1f} (train bandits) |")
        wall = ref.get("at_same_wall_time")
        if wall:
            lines.append(f"| RL² (ours), training return after the same training time | {wall['env_steps']:,.0f} | "
                         f"{wall['train_s'] / 60:.1f} min | | {wall['train_return']:.1f} (train bandits) |")
        f = ref["final_test"]
        lines.append(f"| RL² (ours), full run | {ref['train_env_steps']:,.0f} | "
                     f"{ref['train_wall_time_s'] / 60:.1f} min | {ref['env_steps_per_s']:.0f} | "
                     f"{f['mean']:.1f} ± {f['ci95']:.1f} |")
    lines.append(f"| Gittins (same bandits) | | | | {d['gittins']['mean']:.1f} ± {d['gittins']['ci95']:.1f} |")
    return "\n".join([*heading, *lines])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from sb3_contrib import RecurrentPPO
    from stable_baselines3.common.logger import Logger
    from stable_baselines3.common.vec_env import DummyVecEnv

    from metarl.bandits import Gittins, play

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--timesteps", type=int, default=200_000)
    parser.add_argument("--envs", type=int, default=8, help="parallel trials (DummyVecEnv)")
    parser.add_argument("--lstm", type=int, default=128, help="LSTM units")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="2 updates, 50 test bandits, temporary output")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    timesteps, n_test, out = args.timesteps, 1000, args.out or RESULTS
    if args.quick:
        timesteps, n_test = 2 * args.envs * args.n, 50
        out = args.out or Path(tempfile.mkdtemp()) / "recurrent_ppo_bandits.json"
    ref_config = {"gamma": 0.9, "gae_lambda": 0.3}
    if RL2_RESULTS.exists():
        entry = json.loads(RL2_RESULTS.read_text())["entries"].get(f"rl2_n{args.n}_k{args.k}")
        if entry:
            ref_config = {k: entry["config"][k] for k in ("gamma", "gae_lambda")}
    rngs = [np.random.default_rng([args.seed, i]) for i in range(args.envs)]

    def make(i: int) -> Callable[[], gymnasium.Env]:
        base = BanditEnv(n_arms=args.k, n_pulls=args.n)
        return lambda: TrialWrapper(base, lambda: base.sample_tasks(1, rngs[i], split="train")[0])

    venv = DummyVecEnv([make(i) for i in range(args.envs)])
    venv.seed(args.seed)
    model = RecurrentPPO("MlpLstmPolicy", venv, n_steps=args.n, batch_size=args.n * args.envs // 2, n_epochs=4,
                         learning_rate=1e-3, ent_coef=0.01, policy_kwargs={"lstm_hidden_size": args.lstm},
                         seed=args.seed, device="cpu", **ref_config)
    # SB3's default logger makes an empty SB3-<date> folder in the temp dir on every learn(); log nowhere instead
    model.set_logger(Logger(folder=None, output_formats=[]))
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    model.learn(total_timesteps=timesteps)
    train_s = time.perf_counter() - t0
    load_end = os.getloadavg()[0]
    tasks = BanditEnv(n_arms=args.k).sample_tasks(n_test, np.random.default_rng(0), split="test")
    eval_envs = DummyVecEnv([lambda t=t: TrialWrapper(BanditEnv(n_arms=args.k, n_pulls=args.n, task=t), None)
                             for t in tasks])
    # sub-env b reset with seed b: bandit b's pull t pays uniform(key(b), t) < p, the reward stream of
    # bandit_baselines.py and rl2_bandits.py
    eval_envs.seed(0)
    obs = eval_envs.reset()
    state, starts = None, np.ones(n_test, dtype=bool)
    totals = np.zeros(n_test)
    for _ in range(args.n):
        actions, state = model.predict(obs, state=state, episode_start=starts, deterministic=False)
        obs, rewards, dones, _ = eval_envs.step(actions)
        totals += rewards
        starts = dones
    gittins = play(Gittins(), np.array([t.probs for t in tasks]), args.n, seed=0).total_reward
    payload = {
        "benchmark": "recurrent_ppo_bandits",
        "setup": {"env": "metarl/Bandit-v0 through TrialWrapper", "n_pulls": args.n, "n_arms": args.k,
                  "policy": "MlpLstmPolicy", "lstm_hidden_size": args.lstm, "n_envs": args.envs, "n_steps": args.n,
                  "n_epochs": 4, "learning_rate": 1e-3, "ent_coef": 0.01, **ref_config,
                  "test": {"n_bandits": n_test, "split": "test", "task_seed": 0, "reward_seed": 0},
                  "quick": args.quick},
        "timesteps": timesteps, "train_wall_time_s": train_s,
        # the machine is shared: the 1-minute load average when training started and ended
        "load_average_1min": {"start": load_start, "end": load_end, "cpu_count": os.cpu_count()},
        "env_steps_per_s": timesteps / max(train_s, 1e-9),
        "reduced": True, "reduced_note": "far fewer env steps than the RL² run (see rl2, at_same_env_steps)",
        "result": mean_ci95(totals).to_dict(), "gittins": mean_ci95(gittins).to_dict(),
        "minus_gittins": mean_ci95(totals - gittins).to_dict(),
        "rl2": rl2_reference(args.n, args.k, timesteps, train_s),
    }
    write_results(out, payload, wall_time_s=time.perf_counter() - t0)
    print(readme_table(json.loads(out.read_text())))  # the table of the file as written, provenance included
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return payload


if __name__ == "__main__":
    main()
