"""Few-shot learners: oracle tests (answers by hand) and equivalence tests (vmap == loop, second order ==
finite differences, first order == second order without the Hessian term, Meta-SGD with fixed alpha == MAML)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from torch import nn

from metarl.agents.learned_optimizer import (
    AndrychowiczCell,
    LSTMOptimizerConfig,
    LSTMOptimizerLearner,
    MetaSGDConfig,
    MetaSGDLearner,
    RaviLarochelleCell,
    preprocess,
)
from metarl.agents.maml import MamlConfig, MamlLearner
from metarl.agents.protonet import ProtoNetConfig, ProtoNetLearner, prototype_logits, prototypes
from metarl.agents.reptile import (
    AdamState,
    ReptileConfig,
    ReptileLearner,
    adam_step,
    annealed_step,
    minibatches,
    reptile_update,
)
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.nets import BatchStatNorm2d, Conv4, sinusoid_mlp
from metarl.supervised import (
    InnerSGD,
    Problem,
    adapt_task,
    episode_loss,
    forward,
    head_parameter_names,
    meta_backward,
    predict,
)
from metarl.types import Episode

CLASSIFY = Problem("classification", (1, 28, 28), 5)
REGRESS = Problem("regression", (1,), 1)


def _regression_episodes(n: int, k: int = 4, q: int = 6, seed: int = 0, dtype: torch.dtype = torch.float64,
                         d_in: int = 1) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        a, phase = 0.5 + 2 * torch.rand((), generator=g), torch.rand((), generator=g) * math.pi
        x = (torch.rand(k + q, d_in, generator=g) * 10 - 5).to(dtype)
        y = (a * torch.sin(x.sum(1, keepdim=True) - phase)).to(dtype)
        out.append(Episode(x[:k], y[:k], x[k:], y[k:]))
    return out


def _image_episodes(n: int, ways: int = 5, k: int = 1, q: int = 2, seed: int = 0,
                    dtype: torch.dtype = torch.float64, size: int = 28) -> list[Episode]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(ways)
    return [Episode(torch.rand(ways * k, 1, size, size, generator=g, dtype=dtype), labels.repeat_interleave(k),
                    torch.rand(ways * q, 1, size, size, generator=g, dtype=dtype), labels.repeat_interleave(q),
                    ways=ways) for _ in range(n)]


def _leaves(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()}


def _meta_grad(module: nn.Module, episodes: list[Episode], inner: InnerSGD, batching: str,
               params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    theta = params if params is not None else _leaves(module)
    meta_backward(module, theta, episodes, inner, batching)
    return {k: v.grad.clone() if v.grad is not None else torch.zeros_like(v) for k, v in theta.items()}


# ---------------------------------------------------------------------------------------------- ProtoNet


def test_protonet_logits_for_two_hand_placed_prototypes() -> None:
    z_support = torch.tensor([[0.0, 0.0], [2.0, 2.0], [4.0, 0.0]])  # class 0: (0,0) and (2,2); class 1: (4,0)
    protos = prototypes(z_support, torch.tensor([0, 0, 1]), 2)
    assert protos.tolist() == [[1.0, 1.0], [4.0, 0.0]]
    logits = prototype_logits(torch.tensor([[1.0, 0.0], [4.0, 1.0]]), protos)
    # d((1,0),(1,1)) = 1, d((1,0),(4,0)) = 9; d((4,1),(1,1)) = 9, d((4,1),(4,0)) = 1
    assert logits.tolist() == [[-1.0, -9.0], [-9.0, -1.0]]
    p = logits.softmax(-1)
    assert p[0, 0].item() == pytest.approx(1 / (1 + math.exp(-8)))
    shuffled = prototypes(z_support[[2, 0, 1]], torch.tensor([1, 0, 0]), 2)  # by label, not by position
    assert torch.equal(shuffled, protos)


def test_protonet_batch_norm_policies_and_training_step() -> None:
    torch.manual_seed(0)
    learner = ProtoNetLearner(ProtoNetConfig(hidden=(8,)), CLASSIFY)
    episodes = _image_episodes(2, dtype=torch.float32)
    metrics = learner.meta_train_step(episodes)
    assert set(metrics) == {"train/loss", "train/query_accuracy", "train/lr"} and learner.steps_done == 1
    running = {k: v.clone() for k, v in learner.net.named_buffers()}
    e = episodes[0]
    eval_logits = learner.adapt(e).predict(e.query_x)
    trans = ProtoNetLearner(ProtoNetConfig(hidden=(8,), batch_norm="transductive"), CLASSIFY)
    trans.load_state_dict(learner.state_dict())
    t_logits = trans.adapt(e).predict(e.query_x)
    assert eval_logits.shape == t_logits.shape == (10, 5) and not torch.allclose(eval_logits, t_logits)
    for k, v in trans.net.named_buffers():  # a transductive prediction leaves the running statistics alone
        assert torch.equal(v, running[k]), k
    # non-transductive: a query's logits do not depend on the other queries
    alone = learner.adapt(e).predict(e.query_x[:1])
    torch.testing.assert_close(alone, eval_logits[:1])
    assert ProtoNetLearner(ProtoNetConfig(lr_halve_every=1), CLASSIFY).current_lr() == 1e-3


# ---------------------------------------------------------------------------------------------- MAML inner step


def test_maml_inner_step_on_linear_regression_in_closed_form() -> None:
    net = nn.Linear(1, 1).double()
    with torch.no_grad():
        net.weight.fill_(0.5)
        net.bias.fill_(-1.0)
    x = torch.tensor([[1.0], [2.0], [-1.0]], dtype=torch.float64)
    y = torch.tensor([[2.0], [3.0], [0.0]], dtype=torch.float64)
    alpha = 0.1
    w, b = 0.5, -1.0
    for _ in range(2):  # L = mean((w x + b - y)^2): dL/dw = 2 mean(r x), dL/db = 2 mean(r)
        r = [w * xi + b - yi for xi, yi in ((1.0, 2.0), (2.0, 3.0), (-1.0, 0.0))]
        gw = 2 * np.mean([ri * xi for ri, xi in zip(r, (1.0, 2.0, -1.0), strict=True)])
        gb = 2 * np.mean(r)
        w, b = w - alpha * gw, b - alpha * gb
    phi = adapt_task(net, _leaves(net), x, y, InnerSGD(2, alpha, second_order=True))
    assert phi["weight"].item() == pytest.approx(w, abs=1e-12) and phi["bias"].item() == pytest.approx(b, abs=1e-12)


def test_first_order_equals_second_order_without_the_hessian_term() -> None:
    """Linear regression, one step: d phi / d theta = I - alpha H with H the support loss's Hessian, so the
    second-order meta-gradient is (I - alpha H) g and the first-order one is g = dL_q/dphi at phi."""
    torch.manual_seed(0)
    net = nn.Linear(3, 1).double()
    [e] = _regression_episodes(1, k=5, q=7, d_in=3)
    alpha = 0.05
    fo = _meta_grad(net, [e], InnerSGD(1, alpha, second_order=False), "loop")
    so = _meta_grad(net, [e], InnerSGD(1, alpha, second_order=True), "loop")
    theta = _leaves(net)
    phi = {k: v.detach().requires_grad_(True) for k, v in adapt_task(net, theta, e.support_x, e.support_y,
                                                                       InnerSGD(1, alpha, False)).items()}
    g = torch.autograd.grad(episode_loss(forward(net, phi, e.query_x), e.query_y), [phi["weight"], phi["bias"]])
    g_flat = torch.cat([t.flatten() for t in g])
    torch.testing.assert_close(torch.cat([fo["weight"].flatten(), fo["bias"]]), g_flat)

    def support_loss(flat: torch.Tensor) -> torch.Tensor:
        p = {"weight": flat[:3].view(1, 3), "bias": flat[3:]}
        return episode_loss(forward(net, p, e.support_x), e.support_y)

    h = torch.autograd.functional.hessian(support_loss, torch.cat([net.weight.flatten(), net.bias]).detach())
    expected = (torch.eye(4, dtype=torch.float64) - alpha * h) @ g_flat
    torch.testing.assert_close(torch.cat([so["weight"].flatten(), so["bias"]]), expected)
    assert not torch.allclose(expected, g_flat)


def test_second_order_meta_gradient_equals_finite_differences() -> None:
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 1)).double()  # smooth: accurate differences
    episodes = _regression_episodes(2, k=4, q=5, seed=3)
    inner = InnerSGD(2, 0.3, second_order=True)
    grad = _meta_grad(net, episodes, inner, "loop")
    theta = {k: v.detach().clone() for k, v in net.named_parameters()}

    def meta_loss(params: dict[str, torch.Tensor]) -> float:
        total = 0.0
        for e in episodes:
            p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            phi = adapt_task(net, p, e.support_x, e.support_y, InnerSGD(2, 0.3, second_order=False))
            total += episode_loss(forward(net, phi, e.query_x), e.query_y).item()
        return total / len(episodes)

    eps = 1e-6
    for name, value in theta.items():
        for i in range(value.numel()):
            plus, minus = {k: v.clone() for k, v in theta.items()}, {k: v.clone() for k, v in theta.items()}
            plus[name].view(-1)[i] += eps
            minus[name].view(-1)[i] -= eps
            fd = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
            assert grad[name].view(-1)[i].item() == pytest.approx(fd, rel=1e-5, abs=1e-8), (name, i)


# ---------------------------------------------------------------------------------------------- vmap == loop


@pytest.mark.parametrize("second_order", [True, False])
def test_vmap_meta_gradient_equals_the_per_task_loop_on_the_mlp(second_order: bool) -> None:
    torch.manual_seed(2)
    net = sinusoid_mlp((16, 16)).double()
    episodes = _regression_episodes(4, k=5, q=5, seed=4)
    inner = InnerSGD(3, 0.05, second_order=second_order)
    loop, batched = _meta_grad(net, episodes, inner, "loop"), _meta_grad(net, episodes, inner, "vmap")
    for k in loop:
        torch.testing.assert_close(batched[k], loop[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("variant", ["stride", "pool"])
def test_vmap_meta_gradient_equals_the_loop_through_conv4_batch_norm(variant: str) -> None:
    """The guard of the vmap path: with plain-op BatchNorm the second-order meta-gradient is exact."""
    torch.manual_seed(3)
    net = Conv4(1, 5, hidden=4, variant=variant, norm="batch").double()
    episodes = _image_episodes(3, seed=5)
    inner = InnerSGD(2, 0.4, second_order=True)
    loop, batched = _meta_grad(net, episodes, inner, "loop"), _meta_grad(net, episodes, inner, "vmap")
    for k in loop:
        torch.testing.assert_close(batched[k], loop[k], rtol=1e-9, atol=1e-11)


def test_vmap_refuses_nn_batchnorm() -> None:
    net = Conv4(1, 5, hidden=4, norm="running").double()
    with pytest.raises(ValueError, match="functorch#534"):
        _meta_grad(net, _image_episodes(2), InnerSGD(1, 0.4, True), "vmap")


def test_batch_stat_norm_is_batch_norm_with_batch_statistics() -> None:
    x = torch.randn(6, 3, 5, 5, dtype=torch.float64)
    norm = BatchStatNorm2d(3).double()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        norm.bias.copy_(torch.tensor([0.0, -1.0, 3.0]))
    ref = TF.batch_norm(x, None, None, norm.weight, norm.bias, training=True, eps=1e-5)
    torch.testing.assert_close(norm(x), ref)


def test_anil_adapts_only_the_head_and_matches_the_loop_under_vmap() -> None:
    torch.manual_seed(4)
    net = Conv4(1, 5, hidden=4, variant="stride").double()
    head = head_parameter_names(net)
    assert head == ("head.weight", "head.bias")
    e = _image_episodes(1)[0]
    theta = _leaves(net)
    phi = adapt_task(net, theta, e.support_x, e.support_y, InnerSGD(2, 0.4, True, adapt=head))
    assert all(phi[k] is theta[k] for k in theta if k not in head)
    assert not torch.equal(phi["head.weight"], theta["head.weight"])
    inner = InnerSGD(2, 0.4, second_order=True, adapt=head)
    episodes = _image_episodes(3, seed=7)
    loop, batched = _meta_grad(net, episodes, inner, "loop"), _meta_grad(net, episodes, inner, "vmap")
    for k in loop:
        torch.testing.assert_close(batched[k], loop[k], rtol=1e-9, atol=1e-11)
    assert head_parameter_names(sinusoid_mlp()) == ("4.weight", "4.bias")


# ---------------------------------------------------------------------------------------------- BatchNorm policy


def test_per_query_prediction_is_support_plus_one_query() -> None:
    torch.manual_seed(5)
    net = Conv4(1, 5, hidden=4, variant="stride").double()
    e = _image_episodes(1, q=3)[0]
    params = {k: v.detach() for k, v in net.named_parameters()}
    with torch.no_grad():
        per_query = predict(net, params, e.query_x, e.support_x, "per-query", chunk=4)
        manual = torch.stack([forward(net, params, torch.cat([e.support_x, q[None]]))[-1] for q in e.query_x])
        transductive = predict(net, params, e.query_x, e.support_x, "transductive")
    torch.testing.assert_close(per_query, manual)
    assert not torch.allclose(per_query, transductive)
    mlp = sinusoid_mlp().double()
    [r] = _regression_episodes(1)
    p = {k: v.detach() for k, v in mlp.named_parameters()}
    with torch.no_grad():  # no batch statistics: both policies predict the same
        torch.testing.assert_close(predict(mlp, p, r.query_x, r.support_x, "per-query"),
                                   predict(mlp, p, r.query_x, r.support_x, "transductive"))


# ---------------------------------------------------------------------------------------------- Meta-SGD


def test_meta_sgd_with_fixed_alpha_is_maml() -> None:
    torch.manual_seed(6)
    net = sinusoid_mlp((8, 8)).double()
    episodes = _regression_episodes(3, seed=8)
    theta = _leaves(net)
    alpha = {k: torch.full_like(v, 0.07) for k, v in theta.items()}
    maml = _meta_grad(net, episodes, InnerSGD(2, 0.07, True), "loop")
    msgd = _meta_grad(net, episodes, InnerSGD(2, alpha, True), "loop", params=theta)
    for k in maml:
        torch.testing.assert_close(msgd[k], maml[k], rtol=1e-12, atol=1e-14)
    # ... and the learners take the same first step when alpha starts at MAML's step size
    sgd = MetaSGDLearner(MetaSGDConfig(hidden=(8, 8), alpha_low=0.01, alpha_high=0.01, meta_batch_size=3), REGRESS)
    ref = MamlLearner(MamlConfig(hidden=(8, 8), inner_lr=0.01, meta_batch_size=3), REGRESS)
    ref.net.load_state_dict(sgd.net.state_dict())
    tasks = _regression_episodes(3, dtype=torch.float32)
    sgd.meta_train_step(tasks)
    ref.meta_train_step(tasks)
    for (k, a), b in zip(sgd.net.state_dict().items(), ref.net.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)


def test_meta_sgd_learns_alpha_and_vmap_equals_loop() -> None:
    torch.manual_seed(7)
    net = sinusoid_mlp((8,)).double()
    episodes = _regression_episodes(3, seed=9)
    results = []
    for batching in ("loop", "vmap"):
        theta = _leaves(net)
        torch.manual_seed(0)
        alpha = {k: (torch.rand(v.shape, dtype=v.dtype) * 0.1).requires_grad_(True) for k, v in theta.items()}
        meta_backward(net, theta, episodes, InnerSGD(1, alpha, True), batching)
        results.append([*(v.grad for v in theta.values()), *(a.grad for a in alpha.values())])
    for a, b in zip(*results, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(float(g.abs().sum()) > 0 for g in results[0][len(theta):])  # alpha gets a meta-gradient


# ---------------------------------------------------------------------------------------------- Reptile


def test_reptile_update_moves_theta_towards_the_adapted_weights() -> None:
    theta = {"w": torch.tensor([1.0, 2.0])}
    phis = [{"w": torch.tensor([3.0, 2.0])}, {"w": torch.tensor([1.0, 6.0])}]
    out = reptile_update(theta, phis, 0.5)  # mean phi = (2, 4); theta + 0.5 (phi - theta) = (1.5, 3)
    assert out["w"].tolist() == [1.5, 3.0]
    assert annealed_step(0, 100, 1.0, 0.0) == 1.0 and annealed_step(50, 100, 1.0, 0.0) == 0.5
    assert annealed_step(200, 100, 1.0, 0.0) == 0.0 and annealed_step(7, 0, 0.3, 0.0) == 0.3


def test_reptile_step_is_theta_plus_epsilon_times_phi_minus_theta() -> None:
    learner = ReptileLearner(ReptileConfig(hidden=(8, 8), meta_batch_size=1, meta_step=0.5, meta_step_final=0.5,
                                           inner_lr=0.01), REGRESS)
    [e] = _regression_episodes(1, k=10, dtype=torch.float32)
    theta = {k: v.detach().clone() for k, v in learner.net.named_parameters()}
    state = AdamState(dict(learner.adam.m), dict(learner.adam.v), learner.adam.t)
    torch.manual_seed(11)
    batches = minibatches(10, learner.config.inner_batch, learner.config.inner_steps)
    phi, _ = learner._inner(theta, e, batches, state)
    torch.manual_seed(11)
    learner.meta_train_step([e])
    for k, p in learner.net.named_parameters():
        torch.testing.assert_close(p.detach(), theta[k] + 0.5 * (phi[k] - theta[k]))
    assert learner.adam.t == 5  # the inner Adam's state persists across tasks


def test_adam_step_equals_torch_adam_with_beta1_zero() -> None:
    torch.manual_seed(0)
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([w], lr=0.01, betas=(0.0, 0.999), eps=1e-8)
    params = {"w": w.detach().clone()}
    state = AdamState({"w": torch.zeros(4, dtype=torch.float64)}, {"w": torch.zeros(4, dtype=torch.float64)}, 0)
    for _ in range(3):
        g = torch.randn(4, dtype=torch.float64)
        w.grad = g.clone()
        opt.step()
        params, state = adam_step(params, {"w": g}, state, 0.01, 0.0, 0.999)
    torch.testing.assert_close(params["w"], w.detach())


def test_minibatches_draw_without_replacement_within_a_pass() -> None:
    g = torch.Generator().manual_seed(0)
    batches = minibatches(10, 5, 4, g)  # two passes
    assert sorted(torch.cat(batches[:2]).tolist()) == list(range(10))
    assert sorted(torch.cat(batches[2:]).tolist()) == list(range(10))
    assert [b.tolist() for b in minibatches(5, 10, 2)][0].__len__() == 5  # batch larger than the set: all of it


# ---------------------------------------------------------------------------------------------- LSTM optimizer


def test_gradient_preprocessing_by_hand() -> None:
    x = torch.tensor([1.0, -math.exp(-5.0), 1e-5, 0.0], dtype=torch.float64)
    out = preprocess(x, p=10.0)
    expected = [[0.0, 1.0], [-0.5, -1.0], [-1.0, math.exp(10.0) * 1e-5], [-1.0, 0.0]]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))


def test_lstm_cells_apply_their_update_rules() -> None:
    ravi = RaviLarochelleCell(4).double()
    with torch.no_grad():
        for lin, bias in ((ravi.w_i, -1.0), (ravi.w_f, 2.0)):
            lin.weight.zero_()
            lin.bias.fill_(bias)
    theta, grad = torch.tensor([1.0, -2.0], dtype=torch.float64), torch.tensor([0.5, 0.25], dtype=torch.float64)
    new, state = ravi(grad, torch.ones(2, dtype=torch.float64), theta, ravi.initial_state(2, theta), 10.0)
    i, f = 1 / (1 + math.exp(1.0)), 1 / (1 + math.exp(-2.0))
    torch.testing.assert_close(new, f * theta - i * grad)  # theta_t = f_t theta_{t-1} - i_t grad_t
    assert state[2].tolist() == pytest.approx([i, i]) and state[3].tolist() == pytest.approx([f, f])
    andr = AndrychowiczCell(4, 2, 0.1).double()
    with torch.no_grad():
        andr.out.weight.zero_()
        andr.out.bias.fill_(3.0)
    new, _ = andr(grad, torch.ones(2, dtype=torch.float64), theta, andr.initial_state(2, theta), 10.0)
    torch.testing.assert_close(new, theta + 0.3)  # theta + output_scale * output


@pytest.mark.parametrize("variant", ["andrychowicz", "ravi"])
def test_lstm_optimizer_batched_unroll_equals_one_task_at_a_time(variant: str) -> None:
    torch.manual_seed(8)
    learner = LSTMOptimizerLearner(LSTMOptimizerConfig(variant=variant, hidden=(8,)), REGRESS)
    learner.net.double()
    learner.cell.double()
    episodes = _regression_episodes(3, seed=10)
    theta0 = {k: v.detach() for k, v in learner.net.named_parameters()}
    xs, ys = torch.stack([e.support_x for e in episodes]), torch.stack([e.support_y for e in episodes])
    with torch.no_grad():
        together = learner.unroll(theta0, xs, ys, 3)
        for i, e in enumerate(episodes):
            alone = learner.unroll(theta0, e.support_x[None], e.support_y[None], 3)
            for k in theta0:
                torch.testing.assert_close(together[k][i], alone[k][0], rtol=1e-10, atol=1e-12)


def test_lstm_optimizer_meta_gradient_reaches_the_optimizer_and_the_initialisation() -> None:
    torch.manual_seed(9)
    learner = LSTMOptimizerLearner(LSTMOptimizerConfig(hidden=(8,), max_grad_norm=0.0), REGRESS)
    before = {k: v.detach().clone() for k, v in [*learner.cell.named_parameters(), *learner.net.named_parameters()]}
    metrics = learner.meta_train_step(_regression_episodes(2, dtype=torch.float32))
    assert metrics["train/grad_norm"] > 0
    after = dict([*learner.cell.named_parameters(), *learner.net.named_parameters()])
    assert all(not torch.equal(before[k], after[k].detach()) for k in ("out.weight", "0.weight"))
    curve = learner.adapt_many(_regression_episodes(2, dtype=torch.float32), 3).stage_values
    assert curve.shape == (2, 4)


# ---------------------------------------------------------------------------------------------- the interface


def _learners() -> list[tuple[str, Any, Problem, list[Episode]]]:
    img = _image_episodes(2, dtype=torch.float32)
    reg = _regression_episodes(2, dtype=torch.float32)
    return [("protonet", ProtoNetLearner(ProtoNetConfig(hidden=(8,)), CLASSIFY), CLASSIFY, img),
            ("maml", MamlLearner(MamlConfig(hidden=(8,), meta_batch_size=2, eval_steps=2), CLASSIFY), CLASSIFY, img),
            ("reptile", ReptileLearner(ReptileConfig(hidden=(8,), eval_steps=2), CLASSIFY), CLASSIFY, img),
            ("metasgd", MetaSGDLearner(MetaSGDConfig(hidden=(8, 8)), REGRESS), REGRESS, reg),
            ("lstm-opt", LSTMOptimizerLearner(LSTMOptimizerConfig(hidden=(8, 8), variant="ravi"), REGRESS), REGRESS,
             reg)]


@pytest.mark.parametrize("index", range(5), ids=["protonet", "maml", "reptile", "metasgd", "lstm-opt"])
def test_every_learner_trains_adapts_predicts_and_round_trips_a_checkpoint(index: int, tmp_path: Path) -> None:
    name, learner, problem, episodes = _learners()[index]
    metrics = learner.meta_train_step(episodes)
    assert metrics and all(np.isfinite(v) for v in metrics.values())
    e = episodes[0]
    adapted = learner.adapt(e)
    out = adapted.predict(e.query_x)
    if problem.kind == "classification":
        assert out.shape == (10, 5) and adapted.classify(e.query_x).shape == (10,)
    else:
        assert out.shape == (6, 1)
        with pytest.raises(ValueError, match="classify"):
            adapted.classify(e.query_x)
    result = learner.adapt_many(episodes, 2)
    assert result.metric == problem.metric and result.stage_values.shape[0] == 2 and len(result.adapted) == 2
    save_checkpoint(tmp_path / "c.pt", {"learner": learner.state_dict()})
    fresh = type(learner)(learner.config, problem, seed=123)
    fresh.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    torch.testing.assert_close(fresh.adapt(e).predict(e.query_x), learner.adapt(e).predict(e.query_x))
    assert fresh.to("cpu") is fresh


def test_maml_learns_the_sinusoid_a_little() -> None:
    """A short MAML run must make one adaptation step reduce the query MSE on held-out tasks."""
    from metarl.data.sinusoid import SinusoidTasks

    torch.manual_seed(0)
    src = SinusoidTasks(10, 50)
    learner = MamlLearner(MamlConfig(meta_batch_size=10, inner_lr=0.01, eval_steps=1, outer_lr=3e-3), REGRESS)
    for i in range(250):
        learner.meta_train_step(src.sample_tasks(10, np.random.default_rng(i)))
    curve = learner.adapt_many(src.sample_tasks(100, np.random.default_rng(10_000), "test"), 1).stage_values
    assert curve[:, 1].mean() < 0.8 * curve[:, 0].mean()  # measured: 1.73 vs 2.73
