"""Smoke tests of the speed benchmarks (benchmarks/speed/): the metarl-only parts always, the side-by-side
``--quick`` runs only where the peer libraries of benchmarks/speed/requirements.txt are installed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

SPEED = Path(__file__).resolve().parents[1] / "benchmarks" / "speed"
sys.path.insert(0, str(SPEED))

import maml_meta_iteration as maml  # noqa: E402


def test_maml_agreement_metarl_vs_torch_func_loop() -> None:
    settings = [maml.Setting(2, 1, True), maml.Setting(2, 2, False)]
    rows = maml.agreement(settings, "cpu", seed=0, implementations=("metarl", "torch.func"))
    assert len(rows) == 2
    for row in rows:
        assert row["relative_error_vs_metarl"]["torch.func"] <= maml.AGREEMENT_RTOL


def test_maml_agreement_check_tells_orders_apart() -> None:
    """The agreement tolerance is tight enough to catch a dropped second-order term."""
    batch = maml.episodes(2, 1, torch.float64, "cpu")
    second = maml.Implementation("metarl", maml.Setting(2, 1, True), torch.float64, "cpu", 0).meta_gradient(batch)
    first = maml.Implementation("torch.func", maml.Setting(2, 1, False), torch.float64, "cpu", 0).meta_gradient(batch)
    assert float((first - second).norm() / second.norm()) > 1e3 * maml.AGREEMENT_RTOL


def test_maml_worker_times_metarl() -> None:
    res = maml.worker("metarl", maml.Setting(2, 1, False), iters=2, threads=1, device="cpu", seed=0)
    assert len(res["times_s"]) == 2 and all(t > 0 for t in res["times_s"])
    assert res["peak_rss_mb"] >= res["rss_before_mb"] > 0
    assert res["batching"] in ("loop", "vmap", "grouped")


def test_maml_quick_run_side_by_side(tmp_path: Path) -> None:
    pytest.importorskip("higher")
    pytest.importorskip("torchopt")
    out = tmp_path / "speed_maml.json"
    maml.main(["--quick", "--out", str(out)])
    d = json.loads(out.read_text())
    assert d["quick"] and d["provenance"]["machine"]["cpu_count"] >= 1
    row = d["rows"][0]
    assert set(row["implementations"]) == set(maml.IMPLEMENTATIONS)
    assert row["fastest_peer"] in maml.PEERS and row["speedup_vs_fastest_peer"]["median"] > 0
    assert all(v <= maml.AGREEMENT_RTOL for a in d["agreement"] for v in a["relative_error_vs_metarl"].values())
    assert "| 2nd order, meta-batch 2, 1 step |" in maml.readme_table(d)


def test_batch_stat_norm_fused_path_equals_plain_ops_to_second_order() -> None:
    """metarl.nets.BatchStatNorm2d runs F.batch_norm outside torch.func transforms (the speed-up measured by
    the MAML benchmark) and plain ops inside them; both must agree in value, gradient and double backward."""
    from metarl.nets import BatchStatNorm2d

    torch.manual_seed(0)
    bn = BatchStatNorm2d(3).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    v = torch.randn(4, 3, 5, 5, dtype=torch.float64)

    def outputs(fused: bool) -> list[torch.Tensor]:
        y = bn(x) if fused else torch.func.vmap(bn)(x.unsqueeze(0))[0]  # under vmap: the plain ops
        first = torch.autograd.grad((y * v).pow(2).sum(), (x, bn.weight), create_graph=True)
        second = torch.autograd.grad(sum(g.pow(2).sum() for g in first), (x, bn.weight, bn.bias))
        return [y, *first, *second]

    for fused, plain in zip(outputs(True), outputs(False), strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-10, atol=1e-12)


def test_run_all_quick_protonet_part(tmp_path: Path) -> None:
    """run_all.py --quick --only protonet: the plain-torch ProtoNet agrees with metarl's in float64, then
    both are timed (no peer library needed)."""
    import protonet_episode
    import run_all

    assert run_all.main(["--quick", "--only", "protonet", "--out-dir", str(tmp_path)]) == 0
    d = json.loads((tmp_path / "speed_protonet.json").read_text())
    check = d["agreement"][0]
    assert check["loss_relative_error"] <= 1e-9 and check["gradient_relative_error"] <= 1e-9
    row = d["rows"][0]
    assert row["implementations"]["metarl"]["episodes_per_s"]["median"] > 0
    assert row["ratio_plain_vs_metarl"]["median"] > 0 and d["load_average"]["before"]
    assert "| 5-way 1-shot, 3 queries/class |" in protonet_episode.readme_table(d)


def test_protonet_plain_prototypes_need_class_major_support() -> None:
    """The agreement check is not vacuous: shuffling the support set breaks the plain view(ways, shots)
    prototypes (metarl's go by label) and the losses differ."""
    import protonet_episode as pe

    s = pe.Setting(5, 2, 3)
    e = pe.episode(s, 1, torch.float64)
    perm = torch.randperm(e.support_x.shape[0], generator=torch.Generator().manual_seed(0))
    shuffled = type(e)(e.support_x[perm], e.support_y[perm], e.query_x, e.query_y, ways=e.ways)
    metarl = pe.Implementation("metarl", 5, torch.float64, 0).step(shuffled)
    plain = pe.Implementation("plain torch", 5, torch.float64, 0).step(shuffled)
    assert abs(metarl - plain) > 1e-6


def test_rollout_quick_run(tmp_path: Path) -> None:
    pytest.importorskip("stable_baselines3")
    import rollout_collection

    out = tmp_path / "speed_rollout.json"
    d = rollout_collection.main(["--quick", "--out", str(out)])
    assert {r["env_id"] for r in d["rows"]} == set(rollout_collection.ENVS)
    for r in d["rows"]:
        assert all(r["steps_per_s"][k]["median"] > 0 for k in ("metarl", "metarl + advantages", "sb3"))
        assert r["ratio_vs_sb3"]["median"] > 0
    assert "metarl/Navigation2D-v0 | 4 |" in rollout_collection.readme_table(json.loads(out.read_text()))


def test_end_to_end_reads_committed_training_logs(tmp_path: Path) -> None:
    import end_to_end

    d = end_to_end.main(["--quick", "--out", str(tmp_path / "e2e.json")])
    assert len(d["rows"]) == 3
    for r in d["rows"]:
        assert r["training_wall_time_s"] > 0 and r["reached"] == (r["test_value"] >= r["target"])
    assert "| MAML-RL Navigation2D" in end_to_end.readme_table(d)


def test_memory_core_quick_run(tmp_path: Path) -> None:
    """Eager vs compiled MANN step (and RL²'s GRU and attention, MANN with LRUA): the script checks the eager and
    compiled NTM steps' agreement itself, then times them all."""
    pytest.importorskip("torch._inductor")
    import memory_core

    out = tmp_path / "speed_memory_core.json"
    d = memory_core.main(["--quick", "--out", str(out)])
    assert [r["workload"] for r in d["rows"]] == ["update", "rollout"]
    for r in d["rows"]:
        assert all(s["median"] > 0 for s in r["seconds"].values()) and r["eager_over_compiled"]["median"] > 0
        assert "mann lrua compiled" in r["seconds"] and r["lrua_over_ntm_compiled"]["median"] > 0
    table = memory_core.readme_table(json.loads(out.read_text()))
    assert "| update |" in table and "LRUA / NTM (compiled)" in table
