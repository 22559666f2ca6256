"""Episode collection: one sub-env per episode vs packed (several episodes back to back per sub-env)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarl.pg import task_advantages
from metarl.policies import encode_obs, make_policy
from metarl.registry import make_env
from metarl.rollout import TaskEnvs, collect_packed_episodes, task_policy_act_fn
from metarl.types import TrajectoryBatch

CARTPOLE = "metarl/CartPoleDynamics-v0"


def deterministic_act(obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed function of the observation (so episodes can be replayed in a single env)."""
    actions = ((obs[:, 2] + 0.3 * obs[:, 3] + 0.05 * obs[:, 1]) > 0).long()
    return actions, torch.zeros(obs.shape[0])


def assert_one_episode_per_column(batch: TrajectoryBatch, n_tasks: int, episodes_per_task: int) -> None:
    t, b = batch.mask.shape
    assert b == n_tasks * episodes_per_task
    lengths = batch.lengths.long()
    assert (lengths >= 1).all()
    rows = torch.arange(t)[:, None]
    assert torch.equal(batch.mask.bool(), rows < lengths[None])  # real steps from row 0, then padding
    end = batch.terminated | batch.truncated
    assert torch.equal(end.sum(0), torch.ones(b, dtype=torch.long))  # exactly one end per column ...
    assert end[lengths - 1, torch.arange(b)].all()                   # ... at its last real step
    assert torch.equal(batch.task_index, torch.arange(b) // episodes_per_task)
    assert (batch.rewards[~batch.mask.bool()] == 0).all()


def single_env_streams(task, seed: int, slots: int, episodes: int) -> list[list[torch.Tensor]]:
    """Observation sequences of the first ``episodes`` episodes of each slot, replayed in single envs
    the way a vector env runs them: ``reset(seed=seed + slot)`` once, then seedless resets."""
    streams = []
    for slot in range(slots):
        env = make_env(CARTPOLE)
        env.unwrapped.set_task(task)
        obs, _ = env.reset(seed=seed + slot)
        eps = []
        for _ in range(episodes):
            seq = []
            while True:
                x = encode_obs(obs[None], env.observation_space)
                seq.append(x[0])
                a, _ = deterministic_act(x)
                obs, _, term, trunc, _ = env.step(int(a[0]))
                if term or trunc:
                    break
            eps.append(torch.stack(seq))
            obs, _ = env.reset()
        streams.append(eps)
    return streams


def test_packed_episodes_are_the_slots_streams_in_order() -> None:
    """Oracle: every packed column is an episode of one of its task's sub-envs, and each sub-env
    contributes a prefix of its own stream of episodes (nothing skipped, nothing repeated)."""
    envs = TaskEnvs(CARTPOLE)
    tasks = envs.sample_tasks(3, np.random.default_rng(1))
    slots, e, seed = 2, 5, 11
    batch = envs.collect(deterministic_act, tasks, e, seed, envs_per_task=slots)
    assert_one_episode_per_column(batch, len(tasks), e)
    offset = 0  # sub-env i of the whole vector env is seeded with seed + i
    for k, task in enumerate(tasks):
        streams = single_env_streams(task, seed + offset, slots, e)
        offset += slots
        used: dict[int, set[int]] = {s: set() for s in range(slots)}
        for col in range(k * e, (k + 1) * e):
            ep = batch.obs[: int(batch.lengths[col]), col]
            hits = [(s, j) for s in range(slots) for j, ref in enumerate(streams[s])
                    if ref.shape == ep.shape and torch.equal(ref, ep)]
            assert len(hits) == 1, f"column {col} matches {hits}"
            used[hits[0][0]].add(hits[0][1])
        assert sum(len(v) for v in used.values()) == e
        for s, js in used.items():
            assert js == set(range(len(js))), f"task {k} slot {s} used episodes {sorted(js)}: not a prefix"


def test_packed_batch_has_the_layout_of_one_env_per_episode() -> None:
    envs = TaskEnvs(CARTPOLE)
    policy = make_policy(envs.observation_space, envs.action_space, (16,), "tanh")
    tasks = envs.sample_tasks(4, np.random.default_rng(0))
    act = task_policy_act_fn(policy, None, len(tasks))
    packed = envs.collect(act, tasks, 6, seed=3, envs_per_task=2)
    plain = envs.collect(act, tasks, 6, seed=3)
    for batch in (packed, plain):
        assert_one_episode_per_column(batch, 4, 6)
        assert torch.isfinite(task_advantages(batch, 4, 0.99, 0.97)).all()
    for name in ("obs", "actions", "log_probs", "next_obs"):
        assert getattr(packed, name).dtype == getattr(plain, name).dtype
        assert getattr(packed, name).shape[1:] == getattr(plain, name).shape[1:]
    # log-probabilities recorded are those of the actions taken
    m = packed.mask.bool()
    dist = policy.distribution(packed.obs[m])
    assert torch.allclose(dist.log_prob(packed.actions[m]), packed.log_probs[m], atol=1e-6)
    # next_obs of a step inside an episode is the next row's observation (no reset rows in between)
    inside = m[:-1] & m[1:]
    assert torch.equal(packed.next_obs[:-1][inside], packed.obs[1:][inside])


def test_packed_collection_is_reproducible_from_its_seed() -> None:
    envs = TaskEnvs(CARTPOLE)
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    a = envs.collect(deterministic_act, tasks, 4, seed=5, envs_per_task=1)
    b = envs.collect(deterministic_act, tasks, 4, seed=5, envs_per_task=1)
    assert torch.equal(a.obs, b.obs) and torch.equal(a.rewards, b.rewards)


@pytest.mark.parametrize("bad", [0, 5, True, 1.5, "2"])
def test_bad_envs_per_task_is_a_clear_error(bad) -> None:
    envs = TaskEnvs(CARTPOLE)
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="envs_per_task"):
        envs.collect(deterministic_act, tasks, 4, seed=0, envs_per_task=bad)


def test_packed_collection_needs_the_env_to_end_its_episodes() -> None:
    envs = TaskEnvs(CARTPOLE)
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    with pytest.raises(RuntimeError, match="without the env ending it"):
        collect_packed_episodes(envs.vector(2), deterministic_act, tasks, 3, seed=0, max_steps=3)


def test_packed_collection_checks_the_vector_env_size() -> None:
    envs = TaskEnvs(CARTPOLE)
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="whole number of sub-envs"):
        collect_packed_episodes(envs.vector(3), deterministic_act, tasks, 3, seed=0)
    with pytest.raises(ValueError, match="at most 3 sub-envs per task"):
        collect_packed_episodes(envs.vector(8), deterministic_act, tasks, 3, seed=0)


def test_cli_trains_and_evaluates_with_packed_episodes(tmp_path, capsys) -> None:
    from metarl.cli import load_run, main

    run = tmp_path / "run"
    assert main(["train", "maml-rl", "--env", CARTPOLE, "--out", str(run), "--iterations", "1", "--meta-batch-size",
                 "2", "--fast-batch-size", "4", "--hidden", "8", "--eval-every", "1", "--eval-tasks", "2",
                 "--adapt-episodes", "4", "--episodes-per-env", "2", "--no-progress"]) == 0
    _, envs, info = load_run(run)
    assert info["episodes_per_env"] == 2 and envs.episodes_per_env == 2
    assert main(["evaluate", str(run), "--tasks", "2", "--budget", "1", "--episodes", "4"]) == 0
    assert "| maml-rl |" in capsys.readouterr().out


@pytest.mark.parametrize("algo, value, match", [("maml-rl", "0", ">= 1"), ("rl2", "2", "does nothing for rl2")])
def test_cli_rejects_bad_episodes_per_env(tmp_path, capsys, algo, value, match) -> None:
    from metarl.cli import main

    assert main(["train", algo, "--env", CARTPOLE, "--out", str(tmp_path / "run"), "--iterations", "1",
                 "--episodes-per-env", value, "--no-progress"]) != 0
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
