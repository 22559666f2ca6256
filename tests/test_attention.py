"""The attention memory core (RL² ``core="attention"``): the windowed attention by hand, step == unroll,
the sliding window and the cleared memory, and the agent through the commands."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from metarl.agents.rl2 import RL2Agent, RL2Config
from metarl.attention import AttentionCore, windowed_attention
from metarl.cli import main
from metarl.recurrent import unroll_by_steps
from metarl.rollout import TaskEnvs


def test_windowed_attention_by_hand() -> None:
    """One head, width 1: o_i = sum_j softmax_j(q_i k_j | allowed) v_j, written out."""
    q = torch.tensor([1.0, 2.0]).reshape(1, 1, 2, 1)
    k = torch.tensor([0.5, -1.0, 2.0]).reshape(1, 1, 3, 1)
    v = torch.tensor([10.0, 20.0, 30.0]).reshape(1, 1, 3, 1)
    allowed = torch.tensor([[True, True, False], [False, True, True]]).reshape(1, 1, 2, 3)
    o = windowed_attention(q, k, v, allowed)[0, 0, :, 0]
    w0 = torch.softmax(torch.tensor([0.5, -1.0]), 0)  # query 1.0 on keys 0 and 1
    w1 = torch.softmax(torch.tensor([-2.0, 4.0]), 0)  # query 2.0 on keys 1 and 2
    torch.testing.assert_close(o, torch.stack([w0 @ torch.tensor([10.0, 20.0]), w1 @ torch.tensor([20.0, 30.0])]))
    # the scale is 1 / sqrt(head width)
    o2 = windowed_attention(q.expand(1, 1, 2, 4), k.expand(1, 1, 3, 4), v.expand(1, 1, 3, 4), allowed)
    w0 = torch.softmax(torch.tensor([0.5, -1.0]) * 4 / math.sqrt(4), 0)
    torch.testing.assert_close(o2[0, 0, 0, 0], w0 @ torch.tensor([10.0, 20.0]))


def _core(context: int, layers: int = 2) -> AttentionCore:
    torch.manual_seed(0)
    return AttentionCore(5, 8, layers, 2, context).double()


@pytest.mark.parametrize("context", [3, 20])
def test_unroll_equals_steps_and_a_stored_state_continues_the_sequence(context: int) -> None:
    """``unroll`` over T steps equals T ``step`` calls (outputs and state), and unrolling in two pieces through
    the state equals one unroll: what the rollout stores is what the update recomputes. Context 3 < T slides."""
    core = _core(context)
    x = torch.randn(9, 4, 5, dtype=torch.float64)
    s0 = core.initial_state(4, "cpu")
    out, state = core.unroll(x, s0)
    ref_out, ref_state = unroll_by_steps(core.step, x, s0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(state, ref_state)
    o1, s1 = core.unroll(x[:4], s0)
    o2, s2 = core.unroll(x[4:], s1)
    torch.testing.assert_close(torch.cat([o1, o2]), out)
    torch.testing.assert_close(s2, state)
    assert state.shape == (4, core.state_size) == (4, 5 + context + 2 * 2 * context * 8)


def test_the_window_limits_what_a_step_reads() -> None:
    """One layer, context W: step t reads steps t - W .. t, and through the token shift the input of step
    t - W - 1; nothing older. Inside the window every step matters."""
    w = 3
    core = _core(w, layers=1)
    x = torch.randn(10, 2, 5, dtype=torch.float64)
    out, _ = core.unroll(x, core.initial_state(2, "cpu"))
    t = 9
    for j in range(10):
        y = x.clone()
        y[j] += 1.0
        changed = not torch.allclose(core.unroll(y, core.initial_state(2, "cpu"))[0][t], out[t])
        assert changed == (t - w - 1 <= j <= t), j


def test_cleared_memory_first_step_reads_only_itself() -> None:
    """From the cleared state no cache slot is valid: the first step's attention is over itself alone, so its
    output is the block applied with o = v (softmax over one key), written out here for one layer."""
    core = _core(4, layers=1)
    x = torch.randn(1, 3, 5, dtype=torch.float64)
    state = core.initial_state(3, "cpu")
    assert not state.any()
    out, new = core.unroll(x, state)
    block = core.blocks[0]
    e = core.embed(torch.cat([x[0], torch.zeros_like(x[0])], -1))  # x_{-1} = 0
    _, _, v = block.qkv(block.norm1(e)).chunk(3, dim=-1)
    e = e + block.proj(v)
    e = e + block.mlp(block.norm2(e))
    torch.testing.assert_close(out[0], core.norm(e))
    prev, valid, _ = core.unpack(new)
    torch.testing.assert_close(prev, x[0])
    assert valid.tolist() == [[False, False, False, True]] * 3  # the newest slot is the last


@pytest.mark.parametrize(("cfg", "message"), [
    ({"core": "lstm"}, "core must be one of ('gru', 'attention'), got 'lstm'"),
    ({"core": "attention", "hidden_size": 10, "attention_heads": 4},
     "hidden_size (10) must be a multiple of attention_heads (4)"),
    ({"attention_layers": 0}, "attention_layers must be >= 1, got 0"),
    ({"attention_context": -1}, "attention_context must be >= 0, got -1"),
])
def test_bad_attention_config_is_rejected(cfg: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RL2Config(**cfg)


def test_the_default_context_is_the_training_trial() -> None:
    envs = TaskEnvs("metarl/TabularMDP-v0", {"horizon": 4})
    agent = RL2Agent(envs, RL2Config(core="attention", hidden_size=8, attention_heads=2, episodes_per_trial=3))
    assert isinstance(agent.model.core, AttentionCore) and agent.model.core.context == 12
    # evaluation trials longer than training slide the window; adaptation runs and the policy continues
    result = agent.adapt_many(envs.sample_tasks(2, np.random.default_rng(0), split="test"), budget=4, seed=0)
    assert result.stage_returns.shape == (2, 5) and np.isfinite(result.stage_returns).all()
    policy = result.adapted[0]
    before = policy.state.clone()  # type: ignore[attr-defined]
    assert 0 <= int(policy.act(np.eye(10, dtype=np.float32)[0])) < 5 and not torch.equal(before, policy.state)  # type: ignore[attr-defined]


def test_train_then_evaluate_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "rl2", "--env", "metarl/TabularMDP-v0", "--env-kwarg", "horizon=4", "--core", "attention",
                 "--hidden-size", "8", "--attention-heads", "2", "--iterations", "2", "--meta-batch-size", "3",
                 "--episodes-per-trial", "2", "--eval-tasks", "2", "--eval-every", "1", "--checkpoint-every", "1",
                 "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["algo_config"]["core"] == "attention"
    assert main(["evaluate", str(run), "--tasks", "3", "--budget", "2", "--episodes", "2",
                 "--out", str(tmp_path / "eval")]) == 0
    assert "| rl2 |" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert len(report["curves"]["rl2"]["mean"]) == 3
