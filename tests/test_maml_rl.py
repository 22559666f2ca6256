"""MAML-RL: oracle tests of the TRPO pieces, equivalence tests of the meta-gradient, smoke tests of the agent."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, kl_divergence

from metarl.agents.maml_rl import (
    MamlRLAgent,
    MamlRLConfig,
    adapt_from,
    adapted_distribution,
    inner_step,
    kl_curvature,
    mean_kl,
    outer_surrogate,
)
from metarl.checkpoint import load_checkpoint, save_checkpoint
from metarl.learner import AdaptedPolicy
from metarl.pg import adapt_step, by_task, task_advantages
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, policy_params
from metarl.rollout import TaskEnvs
from metarl.training import TrainConfig, train
from metarl.trpo import LossAndKL, conjugate_gradient, flat, hessian_vector_product, trpo_step
from metarl.types import TrajectoryBatch

# ---------------------------------------------------------------------------------------------- helpers


def _batch(t: int, n: int, e: int, d: int, a: int | None, seed: int = 0) -> TrajectoryBatch:
    """A synthetic batch of ``n`` tasks x ``e`` episodes of random lengths (float64)."""
    g = torch.Generator().manual_seed(seed)
    b = n * e
    actions = (torch.randn(t, b, a, generator=g, dtype=torch.float64) if a is not None
               else torch.randint(0, 3, (t, b), generator=g))
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    steps = torch.arange(t)[:, None]
    mask = (steps < lengths[None]).double()
    return TrajectoryBatch(obs=torch.randn(t, b, d, generator=g, dtype=torch.float64), actions=actions,
                           log_probs=torch.zeros(t, b, dtype=torch.float64),
                           rewards=torch.randn(t, b, generator=g, dtype=torch.float64) * mask,
                           terminated=torch.zeros(t, b, dtype=torch.bool), truncated=steps == (lengths[None] - 1),
                           mask=mask, next_obs=torch.randn(t, b, d, generator=g, dtype=torch.float64),
                           task_index=torch.arange(b) // e)


def _policy(discrete: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # tanh: smooth, so central finite differences are accurate (ReLU kinks are not).
    net = CategoricalMLPPolicy(3, 3, hidden=(5,), activation="tanh") if discrete else \
        GaussianMLPPolicy(3, 2, hidden=(5,), activation="tanh", init_std=0.7)
    return net.double()


class _Problem:
    """A fixed meta-learning problem: ``k`` pre-adaptation batches and one post-adaptation batch."""

    def __init__(self, discrete: bool = False, n: int = 3, e: int = 4, k: int = 1, lr: float = 0.3) -> None:
        self.policy = _policy(discrete)
        self.n, self.lr = n, lr
        a = None if discrete else 2
        self.train = [_batch(6, n, e, 3, a, seed=10 + i) for i in range(k)]
        self.train_adv = [task_advantages(b, n, 0.9) for b in self.train]
        self.valid = _batch(6, n, e, 3, a, seed=99)
        self.valid_adv = task_advantages(self.valid, n, 0.9)
        old = {k_: v.detach() for k_, v in adapt_from(self.policy, self.theta(), self.train, self.train_adv, n, lr,
                                                      False).items()}
        logp = adapted_distribution(self.policy, old, self.valid, n).log_prob(by_task(self.valid.actions, n))
        self.old_log_probs = logp.transpose(0, 1).reshape(6, n * e).detach()  # [N, T, E] -> [T, B]

    def theta(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone().requires_grad_(True) for k, v in policy_params(self.policy).items()}

    def per_task_loss(self, theta: dict[str, torch.Tensor], create_graph: bool = True) -> torch.Tensor:
        adapted = adapt_from(self.policy, theta, self.train, self.train_adv, self.n, self.lr, create_graph)
        return outer_surrogate(self.policy, adapted, self.valid, self.valid_adv, self.old_log_probs, self.n)


def _grad(loss: torch.Tensor, theta: dict[str, torch.Tensor]) -> torch.Tensor:
    return flat(torch.autograd.grad(loss, list(theta.values())))


# ---------------------------------------------------------------------------------------------- TRPO pieces


def test_conjugate_gradient_solves_spd_system() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=6)  # exact after dim steps
    torch.testing.assert_close(x, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)
    # A diagonal system with 2 distinct eigenvalues: CG is exact after 2 steps.
    d = torch.tensor([2.0, 2.0, 5.0, 5.0], dtype=torch.float64)
    x2 = conjugate_gradient(lambda v: d * v, torch.ones(4, dtype=torch.float64), iters=2)
    torch.testing.assert_close(x2, 1 / d)


def test_hessian_vector_product_matches_explicit_hessian() -> None:
    w = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64, requires_grad=True)
    f = (w[0] ** 2) * w[1] + torch.sin(w[2]) * w[0] + w[1] ** 4
    h = torch.autograd.functional.hessian(lambda x: (x[0] ** 2) * x[1] + torch.sin(x[2]) * x[0] + x[1] ** 4,
                                          w.detach())
    v = torch.tensor([1.0, 2.0, -0.5], dtype=torch.float64)
    hvp = hessian_vector_product(f, [w], damping=0.1)
    torch.testing.assert_close(hvp(v), h @ v + 0.1 * v)


def _categorical_trust_region_problem() -> tuple[torch.Tensor, LossAndKL]:
    """States x actions logits; loss = -E_old[ratio * A]; KL(old || new) averaged over states."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, generator=g, dtype=torch.float64).requires_grad_(True)
    old = Categorical(logits=logits.detach().clone())
    actions = old.sample((64,))                               # [64, 4]
    adv = torch.randn(64, 4, generator=g, dtype=torch.float64)
    old_logp = old.log_prob(actions)

    def loss_and_kl(need_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        new = Categorical(logits=logits)
        ratio = (new.log_prob(actions) - old_logp).exp()
        return -(ratio * adv).mean(), kl_divergence(old, new).mean()

    return logits, loss_and_kl


@pytest.mark.parametrize("max_kl", [0.01, 0.05])
def test_trpo_step_respects_kl_bound_and_improves(max_kl: float) -> None:
    torch.manual_seed(0)
    logits, loss_and_kl = _categorical_trust_region_problem()
    before = logits.detach().clone()
    loss0, _ = loss_and_kl(False)
    info = trpo_step([logits], loss_and_kl, max_kl=max_kl, cg_iters=10, damping=1e-3)
    loss1, kl1 = loss_and_kl(False)
    assert info.accepted
    assert kl1.item() <= max_kl * (1 + 1e-9)
    assert loss1.item() < loss0.item() - 1e-4
    assert math.isclose(info.loss_after, loss1.item()) and math.isclose(info.kl, kl1.item())
    # The quadratic model makes the full step land near the bound: the KL is used, not wasted.
    assert kl1.item() > 0.3 * max_kl
    assert not torch.equal(before, logits.detach())


def test_trpo_step_keeps_parameters_when_no_candidate_is_acceptable() -> None:
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)

    def loss_and_kl(need_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # A KL that jumps above the bound for any change at all: every candidate is rejected.
        kl = 0.5 * (w - torch.tensor([1.0, -2.0], dtype=torch.float64)).pow(2).sum()
        return w.sum(), kl + (kl > 0).double()

    info = trpo_step([w], loss_and_kl, max_kl=0.01, max_backtracks=3)
    assert not info.accepted and info.line_search_steps == 3
    torch.testing.assert_close(w.detach(), torch.tensor([1.0, -2.0], dtype=torch.float64))


def test_trpo_step_raises_on_a_non_finite_curvature_instead_of_skipping() -> None:
    """A NaN second derivative (here sqrt's at 0) must stop training with a clear error, not skip every update."""
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def loss_and_kl(need_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return -w.sum(), w.pow(2).sum().sqrt()  # d2/dw2 of |w| at 0 is NaN in autograd

    with pytest.raises(FloatingPointError, match="KL curvature is not finite"):
        trpo_step([w], loss_and_kl, max_kl=0.01)
    assert torch.equal(w.detach(), torch.zeros(2, dtype=torch.float64))
    with pytest.raises(FloatingPointError, match="loss gradient is not finite"):  # checked before conjugate gradient
        trpo_step([w], lambda need_graph: (w.pow(2).sum().sqrt(), w.pow(2).sum()), max_kl=0.01)


# ---------------------------------------------------------------------------------------------- meta-gradients


@pytest.mark.parametrize(("discrete", "k"), [(False, 1), (True, 1), (False, 2)])
def test_second_order_meta_gradient_matches_finite_differences(discrete: bool, k: int) -> None:
    problem = _Problem(discrete=discrete, k=k)
    theta = problem.theta()
    g = _grad(problem.per_task_loss(theta).mean(), theta)
    u = torch.randn(g.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    u = u / u.norm()
    eps = 1e-5

    def j(sign: float) -> float:
        shifted, i = {}, 0
        for name, v in theta.items():
            shifted[name] = (v.detach() + sign * eps * u[i:i + v.numel()].view_as(v)).requires_grad_(True)
            i += v.numel()
        return problem.per_task_loss(shifted, create_graph=False).mean().item()

    fd = (j(1.0) - j(-1.0)) / (2 * eps)
    assert math.isclose((g @ u).item(), fd, rel_tol=1e-5, abs_tol=1e-9)


@pytest.mark.parametrize("discrete", [False, True])
def test_first_order_equals_post_adaptation_gradient(discrete: bool) -> None:
    problem = _Problem(discrete=discrete)
    theta = problem.theta()
    first = _grad(problem.per_task_loss(theta, create_graph=False).mean(), theta)
    # FOMAML drops the Hessian term: d phi / d theta = I, so the meta-gradient is the gradient of the
    # post-adaptation loss with respect to the adapted parameters, summed over tasks.
    with torch.enable_grad():
        phi = adapt_from(problem.policy, theta, problem.train, problem.train_adv, problem.n, problem.lr, False)
    phi = {k: v.detach().requires_grad_(True) for k, v in phi.items()}
    post = outer_surrogate(problem.policy, phi, problem.valid, problem.valid_adv, problem.old_log_probs,
                           problem.n).mean()
    per_task = torch.autograd.grad(post, list(phi.values()))
    torch.testing.assert_close(first, flat([gr.sum(0) for gr in per_task]))
    second = _grad(problem.per_task_loss(theta).mean(), theta)
    assert (second - first).norm() > 1e-6 * first.norm()  # the Hessian term is really there


@pytest.mark.parametrize(("discrete", "first_order"), [(False, False), (True, False), (False, True)])
def test_batched_meta_gradient_equals_task_loop(discrete: bool, first_order: bool) -> None:
    problem = _Problem(discrete=discrete, k=2)
    n, e = problem.n, 4
    weights = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    theta = problem.theta()
    batched = _grad((weights * problem.per_task_loss(theta, create_graph=not first_order)).sum(), theta)
    looped = torch.zeros_like(batched)
    for i in range(n):
        cols = slice(i * e, (i + 1) * e)
        th = problem.theta()
        adapted = adapt_from(problem.policy, th, [b.select(cols) for b in problem.train],
                             [a[:, cols] for a in problem.train_adv], 1, problem.lr, not first_order)
        loss = outer_surrogate(problem.policy, adapted, problem.valid.select(cols), problem.valid_adv[:, cols],
                               problem.old_log_probs[:, cols], 1)
        looped += weights[i] * _grad(loss.sum(), th)
    torch.testing.assert_close(batched, looped)


@pytest.mark.parametrize(("discrete", "k", "second_order"),
                         [(False, 1, True), (True, 1, True), (False, 2, True), (True, 2, False)])
def test_gauss_newton_kl_curvature_equals_autograd_hessian(discrete: bool, k: int, second_order: bool) -> None:
    problem = _Problem(discrete=discrete, k=k)
    theta = problem.theta()
    with torch.enable_grad():
        old = {k_: v.detach() for k_, v in adapt_from(problem.policy, theta, problem.train, problem.train_adv,
                                                        problem.n, problem.lr, False).items()}
    old_dist = adapted_distribution(problem.policy, old, problem.valid, problem.n)
    adapted = adapt_from(problem.policy, theta, problem.train, problem.train_adv, problem.n, problem.lr,
                         second_order)
    reference = hessian_vector_product(mean_kl(old_dist, problem.policy, adapted, problem.valid, problem.n),
                                       list(theta.values()))
    ours = kl_curvature(problem.policy, theta, problem.train, problem.train_adv, problem.valid, old_dist,
                        problem.n, problem.lr, second_order)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        v = torch.randn(sum(t.numel() for t in theta.values()), generator=g, dtype=torch.float64)
        torch.testing.assert_close(ours(v), reference(v), rtol=1e-10, atol=1e-12)


def test_inner_step_equals_pg_adapt_step() -> None:
    problem = _Problem()
    stacked = {k: v.detach().unsqueeze(0).repeat(problem.n, *[1] * v.dim()).requires_grad_(True)
               for k, v in policy_params(problem.policy).items()}
    ours = inner_step(problem.policy, stacked, problem.train[0], problem.train_adv[0], problem.n, 0.3, False)
    ref = adapt_step(problem.policy, stacked, problem.train[0], problem.n, 0.3, 0.9)
    for k in ref:
        torch.testing.assert_close(ours[k], ref[k])


def test_kl_is_zero_at_old_parameters_and_positive_elsewhere() -> None:
    problem = _Problem()
    theta = problem.theta()
    with torch.enable_grad():
        old = {k: v.detach() for k, v in adapt_from(problem.policy, theta, problem.train, problem.train_adv,
                                                      problem.n, problem.lr, False).items()}
    old_dist = adapted_distribution(problem.policy, old, problem.valid, problem.n)
    same = adapt_from(problem.policy, theta, problem.train, problem.train_adv, problem.n, problem.lr, True)
    assert abs(mean_kl(old_dist, problem.policy, same, problem.valid, problem.n).item()) < 1e-12
    moved = {k: (v.detach() + 0.05).requires_grad_(True) for k, v in theta.items()}
    other = adapt_from(problem.policy, moved, problem.train, problem.train_adv, problem.n, problem.lr, True)
    assert mean_kl(old_dist, problem.policy, other, problem.valid, problem.n).item() > 1e-6


# ---------------------------------------------------------------------------------------------- the agent


TINY = dict(hidden=(8,), meta_batch_size=2, fast_batch_size=2, adapt_episodes=2)


def _agent(outer: str = "trpo", first_order: bool = False, env: str = "metarl/Navigation2D-v0",
           seed: int = 0) -> MamlRLAgent:
    return MamlRLAgent(TaskEnvs(env, max_steps=10), MamlRLConfig(**TINY, outer=outer, first_order=first_order),
                       seed=seed)


@pytest.mark.parametrize(("outer", "first_order", "env"), [
    ("trpo", False, "metarl/Navigation2D-v0"), ("trpo", True, "metarl/Navigation2D-v0"),
    ("ppo", False, "metarl/Navigation2D-v0"), ("trpo", False, "metarl/CartPoleDynamics-v0")])
def test_meta_train_step_smoke(outer: str, first_order: bool, env: str) -> None:
    agent = _agent(outer, first_order, env)
    before = {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}
    for it in range(2):
        tasks = agent.envs.sample_tasks(2, np.random.default_rng(it))
        metrics = agent.meta_train_step(tasks)
    assert all(math.isfinite(v) for v in metrics.values())
    for key in ("rollout/pre_adapt_return", "rollout/post_adapt_return", "train/surrogate_before",
                "train/surrogate_after", "train/kl", "rollout/env_steps"):
        assert key in metrics
    assert metrics["rollout/env_steps"] == 2 * 2 * 2 * 10  # (k + 1) batches x tasks x episodes x steps
    if outer == "trpo":
        assert 1 <= metrics["train/line_search_steps"] <= 15
        assert metrics["train/kl"] <= 0.01 + 1e-7
    changed = any(not torch.equal(before[k], v) for k, v in agent.policy.state_dict().items())
    assert changed and agent.steps_done == 2


def test_adapt_returns_adapted_policy() -> None:
    agent = _agent()
    task = agent.envs.sample_tasks(1, np.random.default_rng(0), split="test")[0]
    adapted = agent.adapt(task, budget=2)
    assert isinstance(adapted, AdaptedPolicy) and len(adapted.stage_returns) == 3
    assert adapted.params is not None
    action = adapted.act(np.zeros(2, dtype=np.float32))
    assert action.shape == (2,) and np.all(np.abs(action) <= 0.1)
    # The adapted parameters differ from the meta-parameters; the module itself is untouched.
    assert any(not torch.equal(adapted.params[k], v) for k, v in agent.policy.named_parameters())
    result = agent.adapt_many(agent.envs.sample_tasks(3, np.random.default_rng(1)), budget=1, seed=0,
                              episodes_per_step=2)
    assert result.stage_returns.shape == (3, 2)


@pytest.mark.parametrize("outer", ["trpo", "ppo"])
def test_state_dict_round_trip(tmp_path: Path, outer: str) -> None:
    agent = _agent(outer)
    agent.meta_train_step(agent.envs.sample_tasks(2, np.random.default_rng(0)))
    save_checkpoint(tmp_path / "c.pt", {"learner": agent.state_dict()})  # weights-only safe
    other = _agent(outer, seed=7)
    other.load_state_dict(load_checkpoint(tmp_path / "c.pt")["learner"])
    assert other.steps_done == 1 and other.seed == 0
    for k, v in agent.policy.state_dict().items():
        torch.testing.assert_close(other.policy.state_dict()[k], v, rtol=0, atol=0)
    # Same state, same torch seed: the next update is identical.
    tasks = agent.envs.sample_tasks(2, np.random.default_rng(1))
    torch.manual_seed(3)
    agent.meta_train_step(tasks)
    torch.manual_seed(3)
    other.meta_train_step(tasks)
    for k, v in agent.policy.state_dict().items():
        torch.testing.assert_close(other.policy.state_dict()[k], v, rtol=0, atol=0)


def test_training_loop_runs_maml(tmp_path: Path) -> None:
    agent = _agent()
    metrics = train(agent, agent.envs, tmp_path / "run", TrainConfig(iterations=2, eval_every=1, eval_tasks=2),
                    {"algo": "maml-rl"}, progress=False)
    assert "meta/post_adapt_return" in metrics and (tmp_path / "run" / "checkpoint.pt").exists()


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env", ["metarl/Navigation2D-v0", "metarl/CartPoleDynamics-v0",
                                 "examples.custom_pendulum:family"])
def test_cli_train_then_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str) -> None:
    from metarl import cli

    monkeypatch.chdir(ROOT)  # `--env module:Name` imports relative to the working directory
    run = tmp_path / "run"
    assert cli.main(["train", "maml-rl", "--env", env, "--out", str(run), "--iterations", "2", "--meta-batch-size",
                     "2", "--fast-batch-size", "1", "--hidden", "8", "--eval-every", "1", "--eval-tasks", "2",
                     "--adapt-episodes", "1", "--eval-lrs", "0.1", "0.05", "--no-progress"]) == 0
    assert (run / "checkpoint.pt").exists()
    assert cli.main(["evaluate", str(run), "--tasks", "2", "--budget", "2", "--episodes", "1"]) == 0
    assert (run / "evaluation.json").exists()


@pytest.mark.parametrize(("field", "value", "match"), [
    ("meta_batch_size", 0, "meta_batch_size must be >= 1"), ("outer", "sgd", "outer must be one of"),
    ("ls_backtrack_ratio", 1.0, "ls_backtrack_ratio"), ("inner_lr", 0.0, "inner_lr must be > 0"),
    ("eval_lrs", (0.1, -1.0), "eval_lrs")])
def test_config_validation(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MamlRLConfig(**{field: value})  # type: ignore[arg-type]


def test_evaluation_step_sizes() -> None:
    assert MamlRLConfig(inner_lr=0.5).adaptation_lrs == (0.5, 0.25)
    assert MamlRLConfig(eval_lrs=(0.1,)).adaptation_lrs == (0.1,)
