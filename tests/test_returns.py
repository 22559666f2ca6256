"""Oracle and equivalence tests of metarl.returns: answers computed by hand in the comments."""

from __future__ import annotations

import pytest
import torch

from metarl import returns as R
from metarl.returns import (
    LinearFeatureBaseline,
    discounted_returns,
    fit_linear_baseline,
    gae,
    linear_baseline_features,
    normalize,
    predict_linear_baseline,
)

F64 = torch.float64


def _t(rows: list[list[float]], dtype: torch.dtype = F64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def _tiny() -> dict[str, torch.Tensor]:
    """Two columns, T = 3, gamma = 0.9, lam = 0.8.

    Column 0: an episode terminates at step 1, a new one starts at step 2 and is truncated there.
    Column 1: an episode is truncated at step 1; step 2 is padding (reward 0, end 1).
    """
    return {
        "rewards": _t([[1, 1], [2, 1], [3, 0]]),
        "values": _t([[0.5, 2], [1.0, 3], [2.0, 0]]),
        # V(s_{t+1}) of the TRUE next obs; 7.0 sits at a termination and must be ignored.
        "next_values": _t([[1.0, 3], [7.0, 5], [4.0, 0]]),
        "terminated": torch.tensor([[False, False], [True, False], [False, False]]),
        "episode_end": torch.tensor([[False, False], [True, True], [True, True]]),
    }


def test_gae_by_hand_termination_does_not_bootstrap_truncation_does() -> None:
    d = _tiny()
    adv = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.9, 0.8)
    # column 0: delta = [1 + .9*1 - .5, 2 + 0 - 1, 3 + .9*4 - 2] = [1.4, 1.0, 4.6]
    #           A2 = 4.6 (episode end), A1 = 1.0 (end), A0 = 1.4 + .9*.8*1.0 = 2.12
    # column 1: delta = [1 + .9*3 - 2, 1 + .9*5 - 3, 0] = [1.7, 2.5, 0]
    #           A1 = 2.5 (truncated, bootstrapped in delta), A0 = 1.7 + .72*2.5 = 3.5, A2 = 0
    expected = _t([[2.12, 3.5], [1.0, 2.5], [4.6, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-12)


def test_discounted_returns_by_hand() -> None:
    d = _tiny()
    g = discounted_returns(d["rewards"], d["episode_end"], 0.9, d["terminated"], d["next_values"])
    # column 0: G2 = 3 + .9*4 = 6.6 (truncation bootstraps), G1 = 2 (terminal), G0 = 1 + .9*2 = 2.8
    # column 1: G2 = 0 (padding, end), G1 = 1 + .9*5 = 5.5, G0 = 1 + .9*5.5 = 5.95
    torch.testing.assert_close(g, _t([[2.8, 5.95], [2.0, 5.5], [6.6, 0.0]]), rtol=0, atol=1e-12)
    # terminated=None: every end is terminal, nothing is bootstrapped
    g0 = discounted_returns(d["rewards"], d["episode_end"], 0.9)
    # column 1: G1 = 1, G0 = 1 + .9 = 1.9
    torch.testing.assert_close(g0, _t([[2.8, 1.9], [2.0, 1.0], [3.0, 0.0]]), rtol=0, atol=1e-12)
    # float flags give the same answer as bool flags
    g1 = discounted_returns(d["rewards"], d["episode_end"].double(), 0.9, d["terminated"].float(),
                            d["next_values"])
    torch.testing.assert_close(g1, g)


def test_cut_rollout_bootstraps_from_last_next_value() -> None:
    r = _t([[1.0], [1.0]])
    end = torch.zeros(2, 1, dtype=torch.bool)
    nv = _t([[0.0], [10.0]])
    # G1 = 1 + .5*10 = 6, G0 = 1 + .5*6 = 4
    g = discounted_returns(r, end, 0.5, torch.zeros_like(end), nv)
    torch.testing.assert_close(g, _t([[4.0], [6.0]]))
    torch.testing.assert_close(discounted_returns(r, end, 0.5), _t([[1.5], [1.0]]))


def _random_episodes(t: int = 25, b: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random rollouts whose next_values are consistent: V(s_{t+1}) = values[t+1] inside an episode."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(t, b, generator=g, dtype=F64)
    values = torch.randn(t, b, generator=g, dtype=F64)
    end = torch.rand(t, b, generator=g) < 0.2
    terminated = end & (torch.rand(t, b, generator=g) < 0.5)
    final = torch.randn(t, b, generator=g, dtype=F64)  # value of the final obs at an end / after the last row
    shifted = torch.cat([values[1:], final[-1:]], 0)
    next_values = torch.where(end, final, shifted)
    return {"rewards": rewards, "values": values, "next_values": next_values, "terminated": terminated,
            "episode_end": end}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_lambda_one_plus_values_equals_bootstrapped_returns(seed: int) -> None:
    d = _random_episodes(seed=seed)
    adv = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.97, 1.0)
    g = discounted_returns(d["rewards"], d["episode_end"], 0.97, d["terminated"], d["next_values"])
    torch.testing.assert_close(adv + d["values"], g, rtol=1e-10, atol=1e-10)


def test_gae_lambda_zero_is_td_error() -> None:
    d = _random_episodes(seed=3)
    adv = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.9, 0.0)
    not_term = (~d["terminated"]).double()
    td = d["rewards"] + 0.9 * not_term * d["next_values"] - d["values"]
    torch.testing.assert_close(adv, td, rtol=0, atol=1e-12)


def test_gae_matches_plain_python_loop() -> None:
    d = _random_episodes(t=12, b=3, seed=4)
    adv = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.95, 0.7)
    t_max, b_max = d["rewards"].shape
    for b in range(b_max):
        a_next = 0.0
        for t in reversed(range(t_max)):
            term, end = bool(d["terminated"][t, b]), bool(d["episode_end"][t, b])
            delta = float(d["rewards"][t, b]) + (0.0 if term else 0.95 * float(d["next_values"][t, b])) \
                - float(d["values"][t, b])
            a_next = delta + (0.0 if end else 0.95 * 0.7 * a_next)
            assert abs(float(adv[t, b]) - a_next) < 1e-12


def test_terminal_nan_value_does_not_leak() -> None:
    d = _tiny()
    nv = d["next_values"].clone()
    nv[1, 0] = float("nan")  # at a termination: must be ignored
    adv = gae(d["rewards"], d["values"], nv, d["terminated"], d["episode_end"], 0.9, 0.8)
    g = discounted_returns(d["rewards"], d["episode_end"], 0.9, d["terminated"], nv)
    assert torch.isfinite(adv).all() and torch.isfinite(g).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtype_preserved(dtype: torch.dtype) -> None:
    d = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _tiny().items()}
    adv = gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.9, 0.8)
    g = discounted_returns(d["rewards"], d["episode_end"], 0.9, d["terminated"], d["next_values"])
    assert adv.dtype == dtype and g.dtype == dtype


def test_errors_name_the_problem() -> None:
    d = _tiny()
    with pytest.raises(ValueError, match=r"episode_end must have the shape of rewards \(3, 2\)"):
        discounted_returns(d["rewards"], d["episode_end"][:2], 0.9)
    with pytest.raises(ValueError, match="gamma must be in"):
        discounted_returns(d["rewards"], d["episode_end"], 1.5)
    with pytest.raises(ValueError, match="lam must be in"):
        gae(d["rewards"], d["values"], d["next_values"], d["terminated"], d["episode_end"], 0.9, -0.1)
    bad_end = torch.zeros_like(d["episode_end"])
    with pytest.raises(ValueError, match="episode_end must be terminated OR truncated"):
        gae(d["rewards"], d["values"], d["next_values"], d["terminated"], bad_end, 0.9, 0.8)
    with pytest.raises(TypeError, match="torch.Tensor"):
        discounted_returns([[1.0]], d["episode_end"], 0.9)  # type: ignore[arg-type]


def test_normalize_masked() -> None:
    x = _t([[1.0, 100.0], [3.0, -50.0], [5.0, float("nan")]])
    mask = torch.tensor([[1, 0], [1, 0], [1, 0]])
    out = normalize(x, mask)
    # real entries 1, 3, 5: mean 3, population std sqrt(8/3)
    s = (8 / 3) ** 0.5
    torch.testing.assert_close(out, _t([[-2 / s, 0.0], [0.0, 0.0], [2 / s, 0.0]]), rtol=1e-6, atol=1e-6)
    full = normalize(_t([[1.0], [3.0], [5.0]]))
    torch.testing.assert_close(full[:, 0], out[:, 0])
    # per-task normalisation over dims (1, 2) of [N, T, E]
    y = torch.randn(2, 4, 3, dtype=F64) * torch.tensor([1.0, 10.0], dtype=F64)[:, None, None]
    per = normalize(y, torch.ones_like(y), dim=(1, 2))
    torch.testing.assert_close(per.mean(dim=(1, 2)), torch.zeros(2, dtype=F64), atol=1e-9, rtol=0)
    torch.testing.assert_close(per.pow(2).mean(dim=(1, 2)), torch.ones(2, dtype=F64), atol=1e-6, rtol=0)
    # a single real entry gives 0, not NaN
    assert normalize(_t([[2.0], [7.0]]), torch.tensor([[1], [0]])).abs().sum() == 0


# --------------------------------------------------------------------------------------------------
# linear feature baseline


def test_features_by_hand() -> None:
    obs = _t([[20.0], [-3.0], [1.0]]).reshape(3, 1, 1)
    mask = torch.tensor([[1.0], [1.0], [0.0]])
    f = linear_baseline_features(obs, mask)
    expected = _t([[10.0, 100.0, 0.0, 0.0, 0.0, 1.0],      # clipped to 10, then squared (rllab)
                   [-3.0, 9.0, 0.01, 1e-4, 1e-6, 1.0],     # t = 1: s = 0.01
                   [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]).reshape(3, 1, 6)  # padding
    torch.testing.assert_close(f, expected, rtol=0, atol=1e-15)
    assert LinearFeatureBaseline().features(obs, mask).shape == (3, 1, 6)
    # several episodes per column: the time index restarts after each end
    end = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    f2 = linear_baseline_features(torch.zeros(4, 1, 1, dtype=F64), torch.ones(4, 1, dtype=F64), end)
    torch.testing.assert_close(f2[:, 0, 2], _t([[0.0, 0.01, 0.0, 0.01]])[0])
    # time_offset=1 gives next_obs its own time index
    f3 = linear_baseline_features(obs, mask, time_offset=1)
    torch.testing.assert_close(f3[:2, 0, 2], _t([[0.01, 0.02]])[0])


def _linear_problem(seed: int, t: int = 30, b: int = 8, d: int = 3, dtype: torch.dtype = F64):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(t, b, d, generator=g, dtype=dtype) * 3
    lengths = torch.randint(t // 2, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[:, None] < lengths[None, :]).to(dtype)
    w_true = torch.randn(2 * d + 4, generator=g, dtype=dtype)
    returns = linear_baseline_features(obs, mask) @ w_true
    return obs, returns, mask, w_true


def test_linear_baseline_recovers_linear_returns() -> None:
    obs, returns, mask, w_true = _linear_problem(0)
    # a vanishing ridge coefficient recovers the generating weights exactly (up to float64 round-off)
    w = fit_linear_baseline(obs, returns, mask, reg=1e-10)
    torch.testing.assert_close(w, w_true, rtol=1e-5, atol=1e-5)
    pred = predict_linear_baseline(w, obs, mask)
    torch.testing.assert_close(pred, returns, rtol=1e-7, atol=1e-7)
    assert (pred[mask == 0] == 0).all()
    # rllab's default ridge 1e-5 biases the small time features only slightly at MAML-RL's horizons
    obs, returns, mask, w_true = _linear_problem(0, t=100)
    torch.testing.assert_close(predict_linear_baseline(fit_linear_baseline(obs, returns, mask), obs, mask),
                               returns, rtol=1e-4, atol=1e-4)
    # float32 in, float32 out (the solve itself runs in float64)
    obs32, ret32, mask32, _ = _linear_problem(0, dtype=torch.float32)
    w_f = fit_linear_baseline(obs32, ret32, mask32, reg=1e-10)
    assert w_f.dtype == torch.float32
    torch.testing.assert_close(predict_linear_baseline(w_f, obs32, mask32), ret32, rtol=1e-3, atol=1e-3)


def test_linear_baseline_ignores_masked_steps() -> None:
    obs, returns, mask, w_true = _linear_problem(1)
    pad = mask == 0
    obs_bad = obs.clone()
    obs_bad[pad] = float("nan")
    returns_bad = returns.clone()
    returns_bad[pad] = 1e6
    w = fit_linear_baseline(obs_bad, returns_bad, mask, reg=1e-10)
    torch.testing.assert_close(w, fit_linear_baseline(obs, returns, mask, reg=1e-10), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(w, w_true, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(predict_linear_baseline(w, obs_bad, mask)).all()


def test_linear_baseline_batched_over_tasks_equals_per_task() -> None:
    problems = [_linear_problem(s) for s in range(3)]
    obs = torch.stack([p[0] for p in problems])
    ret = torch.stack([p[1] for p in problems]) + 0.1 * torch.randn(3, 30, 8, dtype=F64)
    mask = torch.stack([p[2] for p in problems])
    w = fit_linear_baseline(obs, ret, mask)
    assert w.shape == (3, 10)
    for n in range(3):
        torch.testing.assert_close(w[n], fit_linear_baseline(obs[n], ret[n], mask[n]), rtol=1e-9, atol=1e-9)
    pred = predict_linear_baseline(w, obs, mask)
    torch.testing.assert_close(pred[1], predict_linear_baseline(w[1], obs[1], mask[1]))


def test_linear_baseline_ridge_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    obs, returns, mask, w_true = _linear_problem(2)
    real_solve = torch.linalg.solve_ex
    diagonals: list[float] = []

    def flaky(a: torch.Tensor, b: torch.Tensor):  # fails for the first two ridge coefficients
        diagonals.append(float(a[-1, -1]))
        sol, info = real_solve(a, b)
        return (sol * float("nan"), info) if len(diagonals) <= 2 else (sol, info)

    monkeypatch.setattr(R.torch.linalg, "solve_ex", flaky)
    w = fit_linear_baseline(obs, returns, mask, reg=1e-5)
    # the bias feature is 1 on every real step: diag = n_real + c, with c = 1e-5, 1e-4, 1e-3
    n_real = float(mask.sum())
    assert diagonals == pytest.approx([n_real + 1e-5, n_real + 1e-4, n_real + 1e-3], rel=0, abs=1e-9)
    assert torch.isfinite(w).all()


def test_linear_baseline_non_finite_data_raises() -> None:
    obs, returns, mask, _ = _linear_problem(3)
    returns[0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="NaN/inf on real steps"):
        fit_linear_baseline(obs, returns, mask)


def test_linear_feature_baseline_class() -> None:
    obs, returns, mask, _ = _linear_problem(4)
    base = LinearFeatureBaseline(reg_coeff=1e-10)
    with pytest.raises(RuntimeError, match="before fit"):
        base.predict(obs, mask)
    base.fit(obs, returns, mask)
    torch.testing.assert_close(base.predict(obs, mask), returns, rtol=1e-7, atol=1e-7)
    with pytest.raises(ValueError, match="features"):
        predict_linear_baseline(base.weights, obs[..., :2], mask)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reg_coeff"):
        LinearFeatureBaseline(reg_coeff=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    d = _random_episodes(seed=5)
    dc = {k: v.cuda() for k, v in d.items()}
    args = ("rewards", "values", "next_values", "terminated", "episode_end")
    adv = gae(*(dc[k] for k in args), 0.99, 0.95)
    assert adv.is_cuda
    torch.testing.assert_close(adv.cpu(), gae(*(d[k] for k in args), 0.99, 0.95))
    obs, returns, mask, _ = _linear_problem(0)
    w = fit_linear_baseline(obs.cuda(), returns.cuda(), mask.cuda())
    torch.testing.assert_close(w.cpu(), fit_linear_baseline(obs, returns, mask), rtol=1e-6, atol=1e-6)
