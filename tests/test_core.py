"""Oracle tests of the small shared pieces: task values, splits, counter RNG, statistics, configs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from typing import ClassVar

import numpy as np
import pytest

from metarl import rng
from metarl.config import config_from_dict, option, require, require_at_least, require_choice, require_positive
from metarl.stats import mean_ci95
from metarl.tasks import sample_split, task_split
from metarl.types import Task


@dataclasses.dataclass(frozen=True)
class PointTask(Task):
    family: ClassVar[str] = "point"
    goal: tuple[float, float]


def _prior(g: np.random.Generator) -> PointTask:
    return PointTask(goal=(float(g.uniform(-1, 1)), float(g.uniform(-1, 1))))


def test_task_json_round_trip_is_exact_and_hashable() -> None:
    t = PointTask(goal=(0.1 + 0.2, -1 / 3))
    back = PointTask.from_json(t.to_json())
    assert back == t and hash(back) == hash(t)
    assert json.loads(t.to_json())["family"] == "point"
    with pytest.raises(ValueError, match="unknown field"):
        PointTask.from_dict({"goal": [0, 0], "speed": 1})
    with pytest.raises(ValueError, match="cannot load a 'other' task"):
        PointTask.from_dict({"family": "other", "goal": [0, 0]})


def test_splits_are_disjoint_deterministic_and_about_20_percent_test() -> None:
    train = sample_split(_prior, 400, np.random.default_rng(0), "train")
    test = sample_split(_prior, 100, np.random.default_rng(1), "test")
    assert all(task_split(t) == "train" for t in train)
    assert all(task_split(t) == "test" for t in test)
    assert not set(train) & set(test)
    assert sample_split(_prior, 5, np.random.default_rng(3), "train") == sample_split(
        _prior, 5, np.random.default_rng(3), "train")
    draws = [task_split(_prior(g)) for g in [np.random.default_rng(i) for i in range(2000)]]
    assert 0.17 < draws.count("test") / len(draws) < 0.23


def test_split_errors() -> None:
    g = np.random.default_rng(0)
    with pytest.raises(ValueError, match="split must be one of"):
        sample_split(_prior, 1, g, "validation")
    with pytest.raises(ValueError, match="no out-of-distribution"):
        sample_split(_prior, 1, g, "ood")
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        sample_split(_prior, 1, 0, "train")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-negative int"):
        sample_split(_prior, -1, g, "train")


def test_counter_rng_is_elementwise_and_uniform() -> None:
    keys = rng.key_from_seed(np.arange(5))
    batch = rng.uniform(keys, np.arange(5))
    single = np.array([rng.uniform(rng.key_from_seed(i), i) for i in range(5)])
    np.testing.assert_array_equal(batch, single)
    u = rng.uniform(rng.key_from_seed(7), np.arange(200_000))
    assert u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
    # neighbouring counters and seeds are decorrelated
    assert abs(np.corrcoef(u[:-1], u[1:])[0, 1]) < 0.01
    assert rng.uniform(rng.key_from_seed(1), 0) != rng.uniform(rng.key_from_seed(2), 0)


def test_mean_ci95_by_hand() -> None:
    s = mean_ci95([1.0, 2.0, 3.0, 4.0])
    # sd = sqrt(5/3); t_{0.975,3} = 3.182
    assert s.mean == 2.5 and math.isclose(s.ci95, 3.182 * math.sqrt(5 / 3) / 2, rel_tol=1e-12)
    assert math.isnan(mean_ci95([3.0]).ci95)
    big = mean_ci95(np.arange(100.0))
    assert math.isclose(big.ci95, 1.96 * np.arange(100.0).std(ddof=1) / 10)
    with pytest.raises(ValueError, match="non-finite"):
        mean_ci95([1.0, float("nan")])


@dataclasses.dataclass(frozen=True)
class _Cfg:
    size: int = option(3, "a size")
    rate: float = option(0.5, "a rate")
    hidden: tuple[int, ...] = option((4, 4), "layers")
    flag: bool = option(False, "a flag")

    def __post_init__(self) -> None:
        require(self.size >= 1, f"size must be >= 1, got {self.size}")


def test_config_from_dict_coerces_validates_and_suggests() -> None:
    c = config_from_dict(_Cfg, {"size": "5", "hidden": ["8", "8", "8"], "flag": "true"})
    assert c == _Cfg(size=5, rate=0.5, hidden=(8, 8, 8), flag=True)
    with pytest.raises(ValueError, match="did you mean 'rate'"):
        config_from_dict(_Cfg, {"rat": 1})
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        config_from_dict(_Cfg, {"size": 0})
    with pytest.raises(ValueError, match="size must be int"):
        config_from_dict(_Cfg, {"size": "three"})
    with pytest.raises(ValueError, match="must be an integer"):
        config_from_dict(_Cfg, {"size": 2.5})


def test_field_checks_name_the_first_bad_field_its_value_and_the_choices() -> None:
    cfg = types.SimpleNamespace(a=1, b=0, c=-1.5, mode="trnsductive")
    require_at_least(cfg, 0, "a", "b")  # passes: 1 >= 0 and 0 >= 0
    with pytest.raises(ValueError, match=r"^b must be >= 1, got 0$"):
        require_at_least(cfg, 1, "a", "b", "c")  # b is the first field below 1
    require_positive(cfg, "a")
    with pytest.raises(ValueError, match=r"^c must be > 0, got -1.5$"):
        require_positive(cfg, "a", "c")
    require_choice(cfg, "mode", ("trnsductive",))
    with pytest.raises(ValueError, match=re.escape(
            "mode must be one of ('transductive', 'per-query'), got 'trnsductive' (did you mean 'transductive'?)")):
        require_choice(cfg, "mode", ("transductive", "per-query"))
    with pytest.raises(ValueError, match=r"got 'trnsductive'$"):  # no close match: no hint
        require_choice(cfg, "mode", ("loop", "vmap"))


def test_results_written_outside_the_repository_name_the_codes_commit(tmp_path):
    import json

    from metarl.provenance import git_commit, write_results

    if git_commit() == "unknown":
        pytest.skip("metarl is not running from a git checkout")
    assert git_commit(tmp_path) == "unknown"  # the output folder itself is not in a repository
    out = write_results(tmp_path / "r.json", {"x": 1})
    assert json.loads(out.read_text())["provenance"]["commit"] == git_commit()


def test_git_commit_is_dirty_with_changed_or_new_files(tmp_path):
    import shutil
    import subprocess

    from metarl.provenance import git_commit

    if shutil.which("git") is None:
        pytest.skip("git is not installed")

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / ".gitignore").write_text("runs/\n")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "one")
    clean = git_commit(tmp_path)
    assert len(clean) == 40 and not clean.endswith("-dirty")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "log.txt").write_text("ignored output\n")
    assert git_commit(tmp_path) == clean  # ignored files do not count
    (tmp_path / "b.py").write_text("y = 2\n")  # a new, untracked source file
    assert git_commit(tmp_path) == clean + "-dirty"
    (tmp_path / "b.py").unlink()
    (tmp_path / "a.py").write_text("x = 3\n")  # a changed tracked file
    assert git_commit(tmp_path) == clean + "-dirty"


def test_results_name_the_commit_the_process_started_from(tmp_path, monkeypatch):
    """A long run whose checkout moves on (new commits, edits) records the code it loaded, and the move."""
    import json

    from metarl import provenance

    out = provenance.write_results(tmp_path / "a.json", {"x": 1})
    assert "commit_at_write" not in json.loads(out.read_text())["provenance"]
    monkeypatch.setattr(provenance, "git_commit", lambda cwd=None: "0123abc-moved")
    rec = json.loads(provenance.write_results(tmp_path / "b.json", {"x": 1}).read_text())["provenance"]
    assert rec["commit"] == provenance.STARTUP_COMMIT != "0123abc-moved"
    assert rec["commit_at_write"] == "0123abc-moved"
