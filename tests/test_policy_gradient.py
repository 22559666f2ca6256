"""Oracle and equivalence tests of the policy-gradient machinery (metarl.pg, metarl.functional)."""

from __future__ import annotations

import math

import pytest
import torch

from metarl import functional as F
from metarl.pg import _real_steps_by_task, adapt_step, by_task, reinforce_loss, task_advantages, task_log_probs
from metarl.policies import CategoricalMLPPolicy, GaussianMLPPolicy, policy_params
from metarl.returns import discounted_returns, fit_linear_baseline, gae, normalize, predict_linear_baseline
from metarl.types import TrajectoryBatch


def _batch(t: int, n: int, e: int, d: int, a: int | None, seed: int = 0) -> TrajectoryBatch:
    g = torch.Generator().manual_seed(seed)
    b = n * e
    obs = torch.randn(t, b, d, generator=g, dtype=torch.float64)
    actions = (torch.randn(t, b, a, generator=g, dtype=torch.float64) if a is not None
               else torch.randint(0, 3, (t, b), generator=g))
    lengths = torch.randint(2, t + 1, (b,), generator=g)
    steps = torch.arange(t)[:, None]
    mask = (steps < lengths[None]).double()
    truncated = steps == (lengths[None] - 1)
    return TrajectoryBatch(obs=obs, actions=actions, log_probs=torch.zeros(t, b, dtype=torch.float64),
                           rewards=torch.randn(t, b, generator=g, dtype=torch.float64) * mask,
                           terminated=torch.zeros(t, b, dtype=torch.bool), truncated=truncated, mask=mask,
                           next_obs=torch.randn(t, b, d, generator=g, dtype=torch.float64),
                           task_index=torch.arange(b) // e)


def test_inner_step_linear_gaussian_matches_closed_form() -> None:
    # pi(a|s) = N(W s + c, sigma^2 I): grad_W log pi = (a - W s - c) s^T / sigma^2.
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, hidden=(), init_std=0.5).double()
    batch = _batch(t=4, n=1, e=5, d=3, a=2)
    adv = torch.randn(4, 5, dtype=torch.float64) * batch.mask
    params = F.stack_params({k: v.detach().clone().requires_grad_(True) for k, v in policy_params(policy).items()}, 1)
    params = {k: v.clone() for k, v in params.items()}
    loss = reinforce_loss(task_log_probs(policy, params, batch, 1), adv, batch.mask, 1).sum()
    lr = 0.3
    new = F.sgd_step(params, loss, lr)

    w, c = policy.net[0].weight.detach(), policy.net[0].bias.detach()
    sigma2 = 0.25
    m = batch.mask.reshape(-1)
    s = batch.obs.reshape(-1, 3)
    act = batch.actions.reshape(-1, 2)
    a_ = adv.reshape(-1)
    resid = (act - s @ w.T - c) / sigma2                      # [M, 2]
    grad_w = (a_[:, None, None] * m[:, None, None] * resid[:, :, None] * s[:, None, :]).sum(0) / m.sum()
    grad_c = (a_[:, None] * m[:, None] * resid).sum(0) / m.sum()
    torch.testing.assert_close(new["net.0.weight"][0], w + lr * grad_w)
    torch.testing.assert_close(new["net.0.bias"][0], c + lr * grad_c)


@pytest.mark.parametrize("discrete", [False, True])
def test_batched_inner_step_equals_task_loop(discrete: bool) -> None:
    torch.manual_seed(1)
    n, e = 3, 4
    policy = (CategoricalMLPPolicy(5, 3, hidden=(8,)) if discrete else GaussianMLPPolicy(5, 2, hidden=(8,))).double()
    batch = _batch(t=6, n=n, e=e, d=5, a=None if discrete else 2, seed=3)
    base = {k: v.detach() for k, v in policy_params(policy).items()}
    # Different starting parameters per task make the test sharper than a shared start.
    stacked = {k: (v.unsqueeze(0) + 0.01 * torch.randn(n, *v.shape, dtype=v.dtype)).requires_grad_(True)
               for k, v in base.items()}
    together = adapt_step(policy, stacked, batch, n, lr=0.5, gamma=0.9)
    for i in range(n):
        single = {k: v[i:i + 1].detach().clone().requires_grad_(True) for k, v in stacked.items()}
        alone = adapt_step(policy, single, batch.select(slice(i * e, (i + 1) * e)), 1, lr=0.5, gamma=0.9)
        for k in base:
            torch.testing.assert_close(together[k][i], alone[k][0])


def test_by_task_layout() -> None:
    x = torch.arange(2 * 6).reshape(2, 6)  # T=2, B=6 = 3 tasks x 2 episodes
    y = by_task(x, 3)
    assert y.shape == (3, 2, 2)
    assert y[1].tolist() == [[2, 3], [8, 9]]
    with pytest.raises(ValueError, match="does not split"):
        by_task(x, 4)


def test_sgd_step_second_order_keeps_graph() -> None:
    w = torch.tensor([1.5], dtype=torch.float64, requires_grad=True)
    params = {"w": w}
    new = F.sgd_step(params, (params["w"] ** 3).sum(), lr=0.1, create_graph=True)
    # w' = w - 0.1 * 3 w^2 ; dw'/dw = 1 - 0.6 w
    (g,) = torch.autograd.grad(new["w"].sum(), w)
    assert math.isclose(g.item(), 1 - 0.6 * 1.5)


# ---------------------------------------------------------------------------------------------- advantages


def _mixed_ends(batch: TrajectoryBatch) -> TrajectoryBatch:
    """``batch`` with every other column's episode ending in a true terminal state, not a time limit."""
    term = batch.truncated.clone()
    term[:, 1::2] = False
    return TrajectoryBatch(**{**vars(batch), "terminated": term, "truncated": batch.truncated & ~term})


def _padded_task_advantages(batch: TrajectoryBatch, n: int, gamma: float, lam: float, norm: bool) -> torch.Tensor:
    """The reference: the same formulas on the padded ``[N, T, E]`` layout (padding included in every op)."""
    end = batch.episode_end
    t, b = batch.rewards.shape
    returns = discounted_returns(batch.rewards, end, gamma)
    obs, mask, end_n = by_task(batch.obs, n), by_task(batch.mask, n), by_task(end, n)
    w = fit_linear_baseline(obs, by_task(returns, n), mask)
    v = predict_linear_baseline(w, obs, mask)
    final = predict_linear_baseline(w, by_task(batch.next_obs, n), mask, time_offset=1)
    nv = torch.where(end_n > 0, final, torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1))
    values, next_values = (x.transpose(0, 1).reshape(t, b) for x in (v, nv))
    adv = gae(batch.rewards, values, next_values, batch.terminated.float(), end, gamma, lam) * batch.mask
    if norm:
        adv = normalize(by_task(adv, n), by_task(batch.mask, n), dim=(1, 2)).transpose(0, 1).reshape(t, b)
    return adv * batch.mask


def test_real_steps_by_task_lists_each_tasks_real_steps_in_order() -> None:
    # 2 tasks x 2 episodes; columns 0,1 -> task 0, columns 2,3 -> task 1. Lengths 1, 3, 2, 0.
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0]], dtype=torch.float64)
    flat, valid = _real_steps_by_task(mask, 2)
    b = 4
    # task 0: (t0,c0) (t0,c1) (t1,c1) (t2,c1); task 1: (t0,c2) (t1,c2)
    assert flat[0].tolist() == [0 * b + 0, 0 * b + 1, 1 * b + 1, 2 * b + 1]
    assert valid.tolist() == [[True] * 4, [True, True, False, False]]
    assert flat[1, :2].tolist() == [0 * b + 2, 1 * b + 2]


@pytest.mark.parametrize("lam", [1.0, 0.97])
@pytest.mark.parametrize("norm", [True, False])
def test_compact_task_advantages_equal_the_padded_formulas(lam: float, norm: bool) -> None:
    batch = _mixed_ends(_batch(9, 3, 4, 2, None, seed=5))
    got = task_advantages(batch, 3, 0.95, lam, normalize_advantages=norm)
    torch.testing.assert_close(got, _padded_task_advantages(batch, 3, 0.95, lam, norm), rtol=1e-9, atol=1e-9)
    assert (got[batch.mask == 0] == 0).all()


def test_task_advantages_ignore_padding_and_other_tasks() -> None:
    batch = _mixed_ends(_batch(8, 2, 3, 2, 2, seed=1))
    ref = task_advantages(batch, 2, 0.9, 0.95)
    pad = batch.mask == 0
    junk = {"obs": batch.obs.masked_fill(pad[..., None], float("nan")),
            "next_obs": batch.next_obs.masked_fill(pad[..., None], float("nan"))}
    torch.testing.assert_close(task_advantages(TrajectoryBatch(**{**vars(batch), **junk}), 2, 0.9, 0.95), ref)
    # Task 1's data (its columns 3..5) does not move task 0's baseline or advantages.
    other = batch.obs.clone()
    other[:, 3:] += 5.0
    moved = task_advantages(TrajectoryBatch(**{**vars(batch), "obs": other}), 2, 0.9, 0.95)
    torch.testing.assert_close(moved[:, :3], ref[:, :3])
    assert not torch.allclose(moved[:, 3:], ref[:, 3:])


# ---------------------------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_gaussian_sample_with_log_prob_is_the_distributions_draw_bit_for_bit(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(4, 2, hidden=(8,))
    out = policy(torch.randn(*shape, 4) * 3)
    torch.manual_seed(11)
    dist = policy.make_distribution(out)
    a_ref = dist.sample()
    logp_ref = dist.log_prob(a_ref)
    torch.manual_seed(11)
    a, logp = policy.sample_with_log_prob(out)
    assert torch.equal(a, a_ref) and torch.equal(logp, logp_ref)
    assert a.shape == a_ref.shape and logp.shape == shape
    # the log-probability keeps its graph to the policy (not used by the rollout, but not silently cut)
    assert logp.requires_grad


@pytest.mark.parametrize("shape", [(7,), (3, 5)])
def test_categorical_sample_with_log_prob_has_the_distributions_log_probs(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    policy = CategoricalMLPPolicy(4, 3, hidden=(8,))
    out = policy(torch.randn(*shape, 4) * 3)
    a, logp = policy.sample_with_log_prob(out)
    assert a.shape == shape and a.dtype == torch.long and logp.shape == shape
    assert bool(((a >= 0) & (a < 3)).all())
    torch.testing.assert_close(logp, policy.make_distribution(out).log_prob(a), rtol=0, atol=1e-6)
    assert logp.requires_grad


def test_categorical_sample_with_log_prob_draws_from_the_softmax() -> None:
    # Inverse-CDF sampling: action k exactly when cdf[k-1] <= u < cdf[k] for u = rand * total. Fixed logits with
    # probabilities 0.1 / 0.0 / 0.6 / 0.3 (a zero-probability action in the middle and at the boundary of u = 0
    # when the first one is zero too): the frequencies over 200k rows match within 5 standard errors, and a
    # probability-0 action is never drawn.
    torch.manual_seed(3)
    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3], [0.0, 0.5, 0.5, 0.0]])
    n = 100_000
    logits = probs.log().repeat_interleave(n, dim=0)   # log 0 = -inf: an impossible action
    a, logp = CategoricalMLPPolicy.sample_with_log_prob(logits)
    for row in range(2):
        freq = torch.bincount(a[row * n:(row + 1) * n], minlength=4).double() / n
        p = probs[row].double()
        assert bool((freq[p == 0] == 0).all())
        assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / n).sqrt() + 1e-12).all()), (row, freq, p)
    assert bool(torch.isfinite(logp).all())
    # u itself: at the row level, the draw is the count of cdf entries <= u
    torch.manual_seed(5)
    u = torch.rand(2 * n, 1)
    torch.manual_seed(5)
    a2, _ = CategoricalMLPPolicy.sample_with_log_prob(logits)
    cdf = logits.softmax(-1).cumsum(-1)
    assert torch.equal(a2, (cdf <= u * cdf[:, -1:]).sum(-1).clamp(max=3))


@pytest.mark.parametrize("discrete", [False, True])
def test_sample_with_log_prob_rejects_nan_outputs(discrete: bool) -> None:
    policy = CategoricalMLPPolicy(4, 3, hidden=(8,)) if discrete else GaussianMLPPolicy(4, 2, hidden=(8,))
    obs = torch.randn(5, 4)
    obs[2, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        policy.sample_with_log_prob(policy(obs))
