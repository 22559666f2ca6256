"""Trials: memory across episodes, cleared between trials; credit over the whole trial; the update
recomputes the rollout's sequence; batched == one trial at a time."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Distribution

from metarl.agents.rl2 import GRUCore
from metarl.attention import AttentionCore
from metarl.recurrent import RecurrentActorCritic, to_chunks, trial_advantages
from metarl.rollout import TaskEnvs
from metarl.trials import TrialBatch, collect_trials, encode_action, memory_input_dim, memory_inputs


class CountingModel:
    """A memory of two numbers: real steps since the trial started, and the reward summed so far
    (read from the ``r_{t-1}`` input). Acts deterministically: action = step count mod n_actions."""

    def __init__(self, n_actions: int, reward_index: int) -> None:
        self.n_actions, self.reward_index = n_actions, reward_index

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 2)

    def step(self, inputs: torch.Tensor, state: torch.Tensor,
             time: torch.Tensor) -> tuple[Distribution, torch.Tensor, torch.Tensor]:
        new = torch.stack([state[:, 0] + 1, state[:, 1] + inputs[:, self.reward_index]], dim=1)
        logits = 1e4 * torch.nn.functional.one_hot(state[:, 0].long() % self.n_actions, self.n_actions).float()
        return Categorical(logits=logits), new[:, 0].clone(), new


def _tabular(num: int) -> tuple[TaskEnvs, list, CountingModel]:
    envs = TaskEnvs("metarl/TabularMDP-v0")
    tasks = envs.sample_tasks(num, np.random.default_rng(0))
    obs_dim = 10
    return envs, tasks, CountingModel(5, reward_index=obs_dim + 5)


def test_memory_persists_across_episodes_and_is_cleared_between_trials() -> None:
    envs, tasks, model = _tabular(3)
    batch = collect_trials(envs.vector(3), model, tasks, 1, n_episodes=3, seed=0, horizon=envs.horizon)
    # values = the step counter after each step: 1..30 without a restart at the episode ends (rows 10, 20)
    expected = torch.arange(1, 31, dtype=torch.float32)[:, None].expand(30, 3)
    torch.testing.assert_close(batch.values, expected)
    assert batch.episode_end[[9, 19, 29]].all() and batch.episode_end.sum() == 9
    # the done flag d_{t-1} is in the input exactly at the first step of episodes 2 and 3
    done = batch.inputs[..., -1]
    assert done[[10, 20]].eq(1).all() and done.sum() == 6
    # the reward memory sums the inputs r_0..r_{T-2} across episode boundaries (r_{T-1} is never an input)
    torch.testing.assert_close(batch.final_states[:, 1], batch.rewards[:-1].sum(0))
    # a new trial (another call) starts from the cleared memory again
    again = collect_trials(envs.vector(3), model, tasks, 1, n_episodes=3, seed=1, horizon=envs.horizon)
    torch.testing.assert_close(again.values, expected)
    torch.testing.assert_close(again.initial_states[0], torch.zeros(3, 2))


def test_gru_memory_carries_into_the_next_episode() -> None:
    """The first step of episode 2 sees the same observation as the first step of episode 1 (state 0 of the
    MDP) but a different hidden state; a fresh trial's first step sees the cleared state."""
    torch.manual_seed(0)
    envs = TaskEnvs("metarl/TabularMDP-v0")
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    model = RecurrentActorCritic(GRUCore(memory_input_dim(envs.observation_space, envs.action_space), 16),
                                 envs.observation_space, envs.action_space)
    batch = collect_trials(envs.vector(2), model, tasks, 1, n_episodes=2, seed=0, horizon=envs.horizon)
    obs = batch.inputs[..., :10]
    torch.testing.assert_close(obs[0], obs[10])  # both episodes start in state 0
    with torch.no_grad():
        _, _, h10 = model.evaluate(batch.inputs[:10], batch.initial_states[0])
        _, v_fresh, _ = model.evaluate(batch.inputs[10:11], model.initial_state(2))
    assert h10.abs().sum() > 0
    torch.testing.assert_close(batch.values[10], model.step(batch.inputs[10], h10, torch.full((2,), 10))[1])
    assert not torch.allclose(v_fresh[0], batch.values[10])


def test_batched_trials_equal_one_trial_at_a_time() -> None:
    envs, tasks, model = _tabular(4)
    batched = collect_trials(envs.vector(4), model, tasks, 1, n_episodes=2, seed=5, horizon=envs.horizon)
    for i, task in enumerate(tasks):
        alone = collect_trials(envs.vector(1), model, [task], 1, n_episodes=2, seed=5 + i, horizon=envs.horizon)
        for name in ("inputs", "actions", "rewards", "values", "mask", "episode", "episode_end"):
            torch.testing.assert_close(getattr(batched, name)[:, i], getattr(alone, name)[:, 0], msg=name)


def test_variable_length_episodes_are_compacted_per_trial() -> None:
    """CartPoleDynamics episodes end at different times; every column holds its 3 episodes back to back."""
    envs = TaskEnvs("metarl/CartPoleDynamics-v0")
    tasks = envs.sample_tasks(5, np.random.default_rng(0))
    model = CountingModel(2, reward_index=4 + 2)
    batch = collect_trials(envs.vector(10), model, tasks, 2, n_episodes=3, seed=0, horizon=envs.horizon)
    lengths = batch.mask.sum(0)
    assert lengths.min() < lengths.max()  # the trials really differ in length
    for b in range(10):
        n = int(lengths[b])
        assert batch.mask[:n, b].eq(1).all() and batch.mask[n:, b].eq(0).all()
        ends = batch.episode_end[:n, b].nonzero().flatten().tolist()
        assert len(ends) == 3 and ends[-1] == n - 1
        # episode index steps up right after each end; the counter never restarts
        assert batch.episode[:n, b].tolist() == [sum(t > e for e in ends[:-1]) for t in range(n)]
        torch.testing.assert_close(batch.values[:n, b], torch.arange(1, n + 1, dtype=torch.float32))
    torch.testing.assert_close(batch.episode_returns.sum(1), batch.trial_returns)
    assert batch.task_index.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_trial_advantages_by_hand() -> None:
    """GAE over the trial: the episode end after step 0 does not cut the sum; the trial's last step is terminal."""
    rewards = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 1.0], [0.2, 0.0], [0.1, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    adv = trial_advantages(rewards, values, mask, gamma=0.9, lam=0.5)
    d2 = 2.0 - 0.1
    d1 = 0.0 + 0.9 * 0.1 - 0.2
    d0 = 1.0 + 0.9 * 0.2 - 0.5
    a1 = d1 + 0.45 * d2
    expected = torch.tensor([[d0 + 0.45 * a1, 3.0 - 1.0], [a1, 0.0], [d2, 0.0]])
    torch.testing.assert_close(adv, expected)


@pytest.mark.parametrize("chunk", [0, 7])
@pytest.mark.parametrize("separate_value", [False, True])
@pytest.mark.parametrize("core", ["gru", "attention"])
def test_update_recomputes_the_rollout_sequence(chunk: int, separate_value: bool, core: str) -> None:
    """From the stored initial states the unroll reproduces the rollout's log-probs and values exactly
    (whole trials or truncated-BPTT chunks), and the stored chunk states are the states of the sequence;
    with a separate value core too (its state rides in the same flat state). The attention core's window
    (10 steps) is shorter than the trials, so its key/value cache slides inside them."""
    torch.manual_seed(0)
    envs = TaskEnvs("metarl/Navigation2D-v0", {"horizon": 12})
    tasks = envs.sample_tasks(3, np.random.default_rng(1))
    d = memory_input_dim(envs.observation_space, envs.action_space)

    def make(width: int) -> torch.nn.Module:
        return GRUCore(d, width) if core == "gru" else AttentionCore(d, 2 * width, 1, 2, 10)

    model = RecurrentActorCritic(make(8), envs.observation_space, envs.action_space,
                                 value_core=make(5) if separate_value else None)
    sizes = [int(m.state_size) for m in (model.core, model.value_core) if m is not None]  # type: ignore[arg-type]
    assert model.initial_state(3).shape == (3, sum(sizes))
    batch = collect_trials(envs.vector(3), model, tasks, 1, n_episodes=2, seed=0, horizon=12, chunk=chunk)
    t = batch.inputs.shape[0]
    assert batch.initial_states.shape[0] == (1 if chunk == 0 else -(-t // chunk))
    with torch.no_grad():
        states = batch.initial_states.reshape(-1, batch.initial_states.shape[-1])
        dist, values, _ = model.evaluate(to_chunks(batch.inputs, batch.chunk), states)
        logp = dist.log_prob(to_chunks(batch.actions, batch.chunk))
        mask = to_chunks(batch.mask, batch.chunk)
        torch.testing.assert_close(logp * mask, to_chunks(batch.log_probs, batch.chunk) * mask)
        torch.testing.assert_close(values * mask, to_chunks(batch.values, batch.chunk) * mask)
        torch.testing.assert_close(batch.initial_states[0], model.initial_state(3))
        for c in range(1, batch.initial_states.shape[0]):
            _, _, h = model.evaluate(batch.inputs[:c * batch.chunk], model.initial_state(3))
            torch.testing.assert_close(batch.initial_states[c], h)
        for b in range(3):  # the final state is each trial's own, at its own length
            n = int(batch.mask[:, b].sum())
            _, _, final = model.evaluate(batch.inputs[:n, b:b + 1], model.initial_state(1))
            torch.testing.assert_close(batch.final_states[b:b + 1], final)


@pytest.mark.parametrize("env_id", ["metarl/Navigation2D-v0", "metarl/Bandit-v0"])
def test_greedy_trials_take_the_most_likely_action(env_id: str) -> None:
    """``greedy=True``: at every real step the action is the argmax (categorical) or the mean (Gaussian) of
    the policy given the trial so far, recomputed from the recorded inputs; sampling differs from it."""
    torch.manual_seed(0)
    kwargs = {"horizon": 12} if "Navigation" in env_id else {"n_pulls": 12}
    envs = TaskEnvs(env_id, kwargs)
    tasks = envs.sample_tasks(4, np.random.default_rng(1))
    model = RecurrentActorCritic(GRUCore(memory_input_dim(envs.observation_space, envs.action_space), 8),
                                 envs.observation_space, envs.action_space)
    batch = collect_trials(envs.vector(4), model, tasks, 1, n_episodes=2, seed=0, horizon=12, greedy=True)
    with torch.no_grad():
        dist, _, _ = model.evaluate(batch.inputs, model.initial_state(4))
    real = batch.mask > 0
    if isinstance(dist, Categorical):
        best = dist.probs.argmax(-1)
    else:
        best = dist.mean
    assert torch.equal(batch.actions[real], best[real])
    torch.testing.assert_close(batch.log_probs[real], dist.log_prob(batch.actions)[real])
    sampled = collect_trials(envs.vector(4), model, tasks, 1, n_episodes=2, seed=0, horizon=12)
    assert not torch.equal(sampled.actions, batch.actions)


def test_memory_inputs_encode_previous_action_reward_and_done() -> None:
    box = gymnasium.spaces.Box(-2.0, 2.0, (2,))
    a = encode_action(torch.tensor([[3.0, -0.5]]), box)
    torch.testing.assert_close(a, torch.tensor([[1.0, -0.5]]))  # what the env executed, in normalised units
    d = encode_action(torch.tensor([2]), gymnasium.spaces.Discrete(3))
    torch.testing.assert_close(d, torch.tensor([[0.0, 0.0, 1.0]]))
    x = memory_inputs(torch.tensor([[0.1]]), d, torch.tensor([0.5]), torch.tensor([True]))
    torch.testing.assert_close(x, torch.tensor([[0.1, 0.0, 0.0, 1.0, 0.5, 1.0]]))
    assert memory_input_dim(gymnasium.spaces.Box(0, 1, (4,)), gymnasium.spaces.Discrete(3)) == 4 + 3 + 2


def test_bad_trial_arguments_fail_clearly() -> None:
    envs, tasks, model = _tabular(2)
    with pytest.raises(ValueError, match="n_episodes must be >= 1"):
        collect_trials(envs.vector(2), model, tasks, 1, n_episodes=0, seed=0, horizon=10)
    with pytest.raises(ValueError, match="build it with num_envs=4"):
        collect_trials(envs.vector(2), model, tasks, 2, n_episodes=1, seed=0, horizon=10)


def test_trial_batch_select_keeps_columns() -> None:
    envs, tasks, model = _tabular(3)
    batch = collect_trials(envs.vector(3), model, tasks, 1, n_episodes=1, seed=0, horizon=10)
    sub = batch.select(torch.tensor([2]))
    assert isinstance(sub, TrialBatch) and sub.inputs.shape[1] == 1 and sub.final_states.shape[0] == 1
    torch.testing.assert_close(sub.rewards[:, 0], batch.rewards[:, 2])


def test_greedy_actions_take_the_mode():
    from torch.distributions import Independent, Normal

    from metarl.trials import greedy_actions

    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]])
    assert greedy_actions(Categorical(logits=logits)).tolist() == [1, 0]
    loc = torch.tensor([[0.3, -1.2]])
    assert torch.equal(greedy_actions(Independent(Normal(loc, torch.ones(1, 2)), 1)), loc)

    class NoMode(Distribution):
        arg_constraints: dict = {}

    with pytest.raises(TypeError, match="NoMode does not define `mode`"):
        greedy_actions(NoMode(validate_args=False))


def test_a_separate_value_core_keeps_the_value_loss_out_of_the_policy_core() -> None:
    """value_core="separate": the values come from the value core alone (the policy core's weights get no
    gradient from a value loss, and the policy's log-probs none from the value core); shared: both flow
    through the one core."""
    torch.manual_seed(0)
    envs = TaskEnvs("metarl/TabularMDP-v0")
    tasks = envs.sample_tasks(2, np.random.default_rng(0))
    d = memory_input_dim(envs.observation_space, envs.action_space)
    for separate in (True, False):
        model = RecurrentActorCritic(GRUCore(d, 6), envs.observation_space, envs.action_space,
                                     value_core=GRUCore(d, 4) if separate else None)
        batch = collect_trials(envs.vector(2), model, tasks, 1, n_episodes=2, seed=0, horizon=envs.horizon)
        dist, values, _ = model.evaluate(batch.inputs, batch.initial_states[0])
        core_grad = torch.autograd.grad(values.square().sum(), list(model.core.parameters()), allow_unused=True)
        assert all(g is None for g in core_grad) == separate
        if separate:
            assert model.value_core is not None
            logp = dist.log_prob(batch.actions).sum()
            v_grad = torch.autograd.grad(logp, list(model.value_core.parameters()), allow_unused=True)
            assert all(g is None for g in v_grad)
            _, values_again, _ = model.evaluate(batch.inputs, batch.initial_states[0])
            assert all(g.abs().sum() > 0 for g in torch.autograd.grad(values_again.sum(),
                                                                       list(model.value_core.parameters())))
