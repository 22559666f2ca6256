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
