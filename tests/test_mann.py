"""MANN: NTM addressing oracle tests, the memory core, and the agent end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.agents.mann import (
    MANNAgent,
    MANNConfig,
    NTMCore,
    address,
    circular_shift,
    content_weights,
    cosine_similarity,
    interpolate,
    least_used,
    lrua_write,
    lrua_write_weights,
    read_memory,
    sharpen,
    usage_update,
    write_memory,
)
from metarl.cli import main
from metarl.recurrent import unroll_by_steps
from metarl.rollout import TaskEnvs
from metarl.trials import collect_trials

ROOT = Path(__file__).resolve().parents[1]


def test_content_weights_are_a_softmax_of_cosine_similarity_times_strength() -> None:
    memory = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])  # slots along +x, +y, -x
    key = torch.tensor([[[2.0, 0.0]]])
    cos = cosine_similarity(key, memory)
    torch.testing.assert_close(cos, torch.tensor([[[1.0, 0.0, -1.0]]]))
    w = content_weights(key, torch.tensor([[2.0]]), memory)
    e = [math.exp(2.0), 1.0, math.exp(-2.0)]
    torch.testing.assert_close(w, torch.tensor([[[v / sum(e) for v in e]]]))
    # strength 0: uniform, whatever the key
    torch.testing.assert_close(content_weights(key, torch.tensor([[0.0]]), memory), torch.full((1, 1, 3), 1 / 3))
    # a zero (cleared) memory: every slot is equally similar
    torch.testing.assert_close(content_weights(key, torch.tensor([[5.0]]), torch.zeros(1, 3, 2)),
                               torch.full((1, 1, 3), 1 / 3))


def test_interpolation_gate() -> None:
    wc, prev = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 1.0]]])
    torch.testing.assert_close(interpolate(wc, prev, torch.tensor([[0.25]])), torch.tensor([[[0.25, 0.75]]]))


def test_circular_shift_by_hand_and_keeps_a_distribution() -> None:
    w = torch.tensor([[[0.7, 0.2, 0.1, 0.0]]])
    # offsets -1, 0, +1: all mass on +1 moves every weight one slot forward (cyclically)
    forward, backward = torch.tensor([[[0.0, 0.0, 1.0]]]), torch.tensor([[[1.0, 0.0, 0.0]]])
    torch.testing.assert_close(circular_shift(w, forward), torch.tensor([[[0.0, 0.7, 0.2, 0.1]]]))
    torch.testing.assert_close(circular_shift(w, backward), torch.tensor([[[0.2, 0.1, 0.0, 0.7]]]))
    torch.testing.assert_close(circular_shift(w, torch.tensor([[[0.0, 1.0, 0.0]]])), w)
    s = torch.tensor([[[0.5, 0.25, 0.25]]])
    # w~(0) = w(1) s(-1) + w(0) s(0) + w(3) s(+1) = 0.2 * 0.5 + 0.7 * 0.25 + 0
    out = circular_shift(w, s)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor(0.2 * 0.5 + 0.7 * 0.25))
    g = torch.Generator().manual_seed(0)
    w_rand = torch.softmax(torch.randn(4, 3, 8, generator=g), -1)
    s_rand = torch.softmax(torch.randn(4, 3, 5, generator=g), -1)
    out = circular_shift(w_rand, s_rand)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(4, 3))


def test_sharpening_keeps_a_distribution() -> None:
    w = torch.tensor([[[0.5, 0.3, 0.2]]])
    out = sharpen(w, torch.tensor([[2.0]]))
    torch.testing.assert_close(out, torch.tensor([[[0.25, 0.09, 0.04]]]) / 0.38)
    torch.testing.assert_close(sharpen(w, torch.tensor([[1.0]])), w)
    torch.testing.assert_close(out.sum(-1), torch.ones(1, 1))
    assert sharpen(w, torch.tensor([[50.0]]))[0, 0, 0] > 0.99  # large gamma -> the argmax


def test_erase_then_add_equals_the_formula() -> None:
    memory = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    w = torch.tensor([[0.25, 0.75]])
    erase, add = torch.tensor([[1.0, 0.5]]), torch.tensor([[10.0, -2.0]])
    out = write_memory(memory, w, erase, add)
    # M(i) [1 - w(i) e] + w(i) a
    expected = torch.tensor([[[1.0 * 0.75 + 2.5, 2.0 * 0.875 - 0.5], [3.0 * 0.25 + 7.5, 4.0 * 0.625 - 1.5]]])
    torch.testing.assert_close(out, expected)
    # full erase and weight 1 on a slot replaces it by the add vector
    torch.testing.assert_close(write_memory(memory, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), add)[0, 0], add[0])
    torch.testing.assert_close(read_memory(out, torch.tensor([[[0.5, 0.5]]]))[0, 0], out[0].mean(0))


def test_least_used_marks_the_n_smallest_usages_ties_in_slot_order() -> None:
    usage = torch.tensor([[0.5, 0.1, 0.9, 0.1], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(least_used(usage, 1), torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(least_used(usage, 2), torch.tensor([[0.0, 1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(least_used(usage, 3), torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]]))


def test_lrua_write_weights_usage_and_write_equal_the_formulas() -> None:
    previous = torch.tensor([[[0.2, 0.8, 0.0], [1.0, 0.0, 0.0]]])  # two heads, three slots
    least = torch.tensor([[0.0, 0.0, 1.0]])
    gate = torch.tensor([[0.25, 1.0]])
    w = lrua_write_weights(previous, least, gate)
    # sigmoid(alpha) w^r_{t-1} + (1 - sigmoid(alpha)) w^lu_{t-1}
    torch.testing.assert_close(w, torch.tensor([[[0.05, 0.2, 0.75], [1.0, 0.0, 0.0]]]))
    read = torch.tensor([[[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]])
    usage = torch.tensor([[1.0, 2.0, 0.0]])
    # gamma_u w^u_{t-1} + sum_h w^r_h + sum_h w^w_h
    torch.testing.assert_close(usage_update(usage, read, w, 0.5),
                               torch.tensor([[0.5 + 0.5 + 1.05, 1.0 + 1.5 + 0.2, 0.0 + 0.0 + 0.75]]))
    memory = torch.tensor([[[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    add = torch.tensor([[[1.0, -1.0], [10.0, 20.0]]])
    out = lrua_write(memory, usage, w, add)
    # slot 2 (least used) cleared first, then M(i) += sum_h w_h(i) a_h
    expected = torch.tensor([[[1.0 + 0.05 + 10.0, 1.0 - 0.05 + 20.0], [2.0 + 0.2, 2.0 - 0.2], [0.75, -0.75]]])
    torch.testing.assert_close(out, expected)


def test_lrua_with_a_closed_gate_fills_a_cleared_memory_slot_by_slot() -> None:
    """Each write going to the least-used slot (gate sigmoid(alpha) ~ 0) puts the first writes of a trial into
    slots 0, 1, 2, ... (one read head, so one least-used slot per step)."""
    torch.manual_seed(0)
    core = NTMCore(4, MANNConfig(controller_size=8, memory_slots=4, memory_width=3, addressing="lrua")).double()
    with torch.no_grad():  # alpha (the head's 5th output: key 3, strength 1, alpha 1) pinned to -30
        core.read_params.weight[4].zero_()
        core.read_params.bias[4] = -30.0
    state = core.initial_state(1, "cpu")
    written = []
    for _ in range(3):
        before = core.unpack(state)[4]
        _, state = core.step(torch.randn(1, 4, dtype=torch.float64), state)
        changed = (core.unpack(state)[4] - before).abs().sum(-1)[0] > 1e-9
        written.append(changed.nonzero().flatten().tolist())
    assert written == [[0], [1], [2]]


def test_addressing_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    args = [torch.randn(2, 2, 3, generator=g, dtype=torch.float64),            # keys
            torch.rand(2, 2, generator=g, dtype=torch.float64) * 3,              # strength
            torch.rand(2, 2, generator=g, dtype=torch.float64),                  # gate
            torch.softmax(torch.randn(2, 2, 3, generator=g, dtype=torch.float64), -1),  # shift
            1 + torch.rand(2, 2, generator=g, dtype=torch.float64),              # gamma
            torch.softmax(torch.randn(2, 2, 5, generator=g, dtype=torch.float64), -1),  # previous weights
            torch.randn(2, 5, 3, generator=g, dtype=torch.float64)]              # memory
    assert torch.autograd.gradcheck(address, tuple(a.requires_grad_(True) for a in args))


def _core(controller: str = "lstm", addressing: str = "ntm") -> NTMCore:
    torch.manual_seed(0)
    return NTMCore(6, MANNConfig(controller=controller, controller_size=8, memory_slots=5, memory_width=3,
                                 read_heads=2, addressing=addressing)).double()


CORES = [("lstm", "ntm"), ("gru", "ntm"), ("lstm", "lrua"), ("gru", "lrua")]


@pytest.mark.parametrize(("controller", "addressing"), CORES)
def test_core_state_layout_and_cleared_memory(controller: str, addressing: str) -> None:
    core = _core(controller, addressing)
    s0 = core.initial_state(4, "cpu")
    ctrl, reads, w_read, w_write, memory = core.unpack(s0)
    assert s0.shape == (4, core.state_size)
    assert memory.abs().sum() == 0 and reads.abs().sum() == 0 and ctrl.abs().sum() == 0
    # NTM: previous weightings one-hot on slot 0; LRUA: nothing read yet and no usage
    torch.testing.assert_close(w_read.sum(-1), torch.full((4, 2), float(addressing == "ntm"), dtype=torch.float64))
    torch.testing.assert_close(core.pack(ctrl, reads, w_read, w_write, memory), s0)
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    out, s = core.unroll(x, s0)
    ref_out, ref_s = unroll_by_steps(core.step, x, s0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(s, ref_s)
    _, _, w_read, w_write, memory = core.unpack(s)
    assert memory.abs().sum() > 0  # it wrote
    torch.testing.assert_close(w_read.sum(-1), torch.ones(4, 2, dtype=torch.float64))  # reads are distributions
    if addressing == "ntm":
        torch.testing.assert_close(w_write.sum(-1), torch.ones(4, 1, dtype=torch.float64))
    else:  # the usage: every step adds R read distributions and R write weightings, decayed by gamma_u
        assert (w_write > 0).all() and (w_write.sum(-1) <= 7 * 2 * (1 + 2)).all()
    assert out.shape == (7, 4, core.output_size)


@pytest.mark.parametrize(("controller", "addressing"), CORES)
def test_fast_unroll_has_the_gradients_of_step_by_step(controller: str, addressing: str) -> None:
    """``unroll`` keeps the state unpacked and stacks the head layers once per sequence; the parameter
    gradients must be those of ``T`` calls of ``step`` (float64)."""
    core = _core(controller, addressing)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 6, generator=g, dtype=torch.float64)
    s0 = core.initial_state(3, "cpu") + 0.1 * torch.rand(3, core.state_size, generator=g, dtype=torch.float64)
    weights = torch.randn(6, 3, core.output_size, generator=g, dtype=torch.float64)

    def grads(unroll: bool) -> list[torch.Tensor]:
        out, s = core.unroll(x, s0) if unroll else unroll_by_steps(core.step, x, s0)
        return list(torch.autograd.grad((out * weights).sum() + s.square().sum(), list(core.parameters())))

    for fast, slow in zip(grads(True), grads(False), strict=True):
        torch.testing.assert_close(fast, slow, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("addressing", ["ntm", "lrua"])
def test_compiled_step_has_the_values_and_gradients_of_the_eager_step(addressing: str) -> None:
    """``compile_step=True`` (torch.compile of one memory step): the same outputs, final state and parameter
    gradients as the eager core with the same weights (float64, up to the rounding of fused kernels)."""
    pytest.importorskip("torch._inductor")
    torch.manual_seed(0)
    small = {"controller_size": 8, "memory_slots": 5, "memory_width": 3, "read_heads": 2, "addressing": addressing}
    eager = NTMCore(6, MANNConfig(**small)).double()
    compiled = NTMCore(6, MANNConfig(**small, compile_step=True)).double()
    compiled.load_state_dict(eager.state_dict())
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 6, generator=g, dtype=torch.float64)
    s0 = eager.initial_state(3, "cpu")

    def run(core: NTMCore) -> list[torch.Tensor]:
        out, s = core.unroll(x, s0)
        return [out.detach(), s.detach(), *torch.autograd.grad(out.square().sum() + s.sum(), list(core.parameters()))]

    for c, e in zip(run(compiled), run(eager), strict=True):
        torch.testing.assert_close(c, e, rtol=1e-9, atol=1e-11)


def test_circular_shift_equals_the_sum_over_rolled_copies() -> None:
    """The gathered convolution equals its definition, sum_o s(o) roll(w, o), for a wider shift range."""
    g = torch.Generator().manual_seed(3)
    w = torch.softmax(torch.randn(2, 3, 7, generator=g, dtype=torch.float64), -1)
    s = torch.softmax(torch.randn(2, 3, 5, generator=g, dtype=torch.float64), -1)  # offsets -2..2
    expected = sum(s[..., o + 2, None] * torch.roll(w, o, dims=-1) for o in range(-2, 3))
    torch.testing.assert_close(circular_shift(w, s), expected)


def test_memory_carries_across_episodes_and_starts_cleared() -> None:
    envs = TaskEnvs("metarl/TabularMDP-v0", {"horizon": 4})
    agent = MANNAgent(envs, MANNConfig(meta_batch_size=2, controller_size=8, memory_slots=4, memory_width=3))
    batch = collect_trials(envs.vector(2), agent.model, envs.sample_tasks(2, np.random.default_rng(0)), 1, 2, 0, 4)
    core = agent.model.core
    assert isinstance(core, NTMCore)
    torch.testing.assert_close(batch.initial_states[0], agent.model.initial_state(2))
    with torch.no_grad():
        _, _, s4 = agent.model.evaluate(batch.inputs[:4], batch.initial_states[0])
    assert core.unpack(s4)[4].abs().sum() > 0  # memory written in episode 1 is there when episode 2 starts
    with torch.no_grad():
        dist, values, _ = agent.model.evaluate(batch.inputs, batch.initial_states[0])
    torch.testing.assert_close(values, batch.values)
    torch.testing.assert_close(dist.log_prob(batch.actions), batch.log_probs)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="controller must be one of"):
        MANNConfig(controller="rnn")
    with pytest.raises(ValueError, match="shift_range must be in"):
        MANNConfig(memory_slots=2, shift_range=1)
    MANNConfig(memory_slots=2, addressing="lrua")  # LRUA has no location addressing: shift_range does not apply
    with pytest.raises(ValueError, match=r"addressing must be one of \('ntm', 'lrua'\), got 'lru'"):
        MANNConfig(addressing="lru")
    with pytest.raises(ValueError, match=r"usage_decay must be in \[0, 1\], got 1.5"):
        MANNConfig(usage_decay=1.5)
    with pytest.raises(ValueError, match="set compile_step=false"):
        MANNConfig(outer="trpo", value_core="separate", compile_step=True)
    with pytest.raises(ValueError, match="use addressing=ntm with outer=trpo"):
        MANNConfig(outer="trpo", value_core="separate", addressing="lrua")


@pytest.mark.parametrize(("env", "kwargs"), [
    ("metarl/Bandit-v0", ["--env-kwarg", "n_pulls=6"]),
    ("metarl/Navigation2D-v0", ["--env-kwarg", "horizon=5"]),
    ("metarl/TabularMDP-v0", ["--env-kwarg", "horizon=3", "--addressing", "lrua"]),
    ("metarl/Navigation2D-v0", ["--env-kwarg", "horizon=5", "--outer", "trpo", "--value-core", "separate"]),
])
def test_train_then_evaluate_through_the_cli(env: str, kwargs: list[str], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "mann", "--env", env, *kwargs, "--out", str(run), "--iterations", "2",
                 "--meta-batch-size", "3", "--episodes-per-trial", "2", "--controller-size", "8", "--memory-slots",
                 "4", "--memory-width", "3", "--eval-tasks", "2", "--no-progress"]) == 0
    assert main(["evaluate", str(run), "--tasks", "2", "--budget", "2", "--episodes", "1"]) == 0
    assert "| learner | episode 1 | episode 2 | episode 3 |" in capsys.readouterr().out
    assert (run / "evaluation.png").stat().st_size > 1000


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("algo", ["rl2", "rl2-attention", "mann"])
def test_memory_agents_train_and_adapt_on_cuda(algo: str) -> None:
    from metarl.cli import build_learner

    sizes = {"rl2": {"hidden_size": 8}, "rl2-attention": {"hidden_size": 8, "attention_heads": 2, "core": "attention"},
             "mann": {"controller_size": 8, "memory_slots": 4}}[algo]
    cfg = {"meta_batch_size": 4, "episodes_per_trial": 2, "bptt_chunk": 5, **sizes}
    algo = algo.split("-")[0]
    for env, kwargs in (("metarl/Bandit-v0", {"n_pulls": 6}), ("metarl/Navigation2D-v0", {"horizon": 5})):
        learner, envs = build_learner(algo, env, kwargs, cfg, 0, "cuda")
        tasks = envs.sample_tasks(4, np.random.default_rng(0))
        assert all(np.isfinite(v) for v in learner.meta_train_step(tasks).values())
        result = learner.adapt_many(tasks, budget=1, seed=0, episodes_per_step=2)
        assert result.stage_returns.shape == (4, 2)
        assert next(learner.model.parameters()).device.type == "cuda"


def test_a_separate_value_core_is_a_second_memory() -> None:
    """value_core="separate" gives the value head its own controller and memory, cleared with the policy's."""
    envs = TaskEnvs("metarl/TabularMDP-v0", {"horizon": 3})
    agent = MANNAgent(envs, MANNConfig(meta_batch_size=2, controller_size=8, memory_slots=4, memory_width=3,
                                       episodes_per_trial=2, value_core="separate"))
    assert isinstance(agent.model.core, NTMCore) and isinstance(agent.model.value_core, NTMCore)
    size = agent.model.core.state_size
    state = agent.model.initial_state(2)
    assert state.shape == (2, 2 * size)
    torch.testing.assert_close(state[:, size:], agent.model.value_core.initial_state(2, "cpu"))
    metrics = agent.meta_train_step(envs.sample_tasks(2, np.random.default_rng(0)))
    assert np.isfinite(metrics["train/value_loss"])
