"""`metarl fewshot`: every learner end to end on a tiny budget, the script, the Python example, exact resume,
and one clear error for bad input."""

from __future__ import annotations

import csv
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarl.checkpoint import load_checkpoint
from metarl.cli import main
from metarl.fewshot import load_fewshot_run

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
HAVE_DATA = (DATA / "images_background_small1.zip").exists()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"Omniglot test data not found at {DATA}")
TINY = ["--iterations", "2", "--eval-every", "1", "--eval-tasks", "2", "--test-episodes", "4", "--no-progress"]


def _omniglot(cache: Path) -> list[str]:
    return ["--dataset", "omniglot", "--data-dir", str(DATA), "--sources", "images_background_small1", "--split",
            "random", "--cache-dir", str(cache), "--ways", "3", "--shots", "1", "--queries", "2", "--hidden", "8"]


SINUSOID = ["--dataset", "sinusoid", "--shots", "5", "--queries", "20", "--meta-batch-size", "3", "--hidden", "8", "8"]
CASES = {
    "protonet": ["--train-ways", "5", "--train-queries", "3"],
    "maml": ["--meta-batch-size", "2", "--eval-steps", "2"],
    "fomaml": ["--meta-batch-size", "2", "--eval-steps", "1"],
    "anil": ["--meta-batch-size", "2", "--eval-steps", "1", "--batch-norm", "per-query"],
    "reptile": ["--meta-batch-size", "2", "--train-shots", "3", "--train-queries", "0", "--eval-steps", "3"],
    "metasgd": ["--meta-batch-size", "2"],
    "lstm-opt": ["--meta-batch-size", "2", "--inner-steps", "2", "--eval-steps", "2"],
}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp() / "omniglot-cache"


@needs_data
@pytest.mark.parametrize("learner", list(CASES))
def test_every_learner_trains_and_evaluates_on_omniglot(learner: str, tmp_path: Path, cache: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["fewshot", learner, *_omniglot(cache), *CASES[learner], *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{learner} test accuracy:" in out and "95% CI over 4 held-out episodes" in out and "BatchNorm:" in out
    assert (run / "checkpoint.pt").exists() and (run / "fewshot_evaluation.png").stat().st_size > 1000
    rows = _rows(run / "progress.csv")
    assert len(rows) == 2 and rows[-1]["meta/post_adapt_accuracy"] != ""
    report = json.loads((run / "fewshot_evaluation.json").read_text())
    p = report["protocol"]
    assert p["ways"] == 3 and p["queries"] == 2 and p["split_evaluated"] == "test" and p["episodes"] == 4
    assert isinstance(p["transductive"], bool) and p["batch_norm"] and "provenance" in report
    assert len(report["per_episode"]) == 4 and 0.0 <= report["final"]["mean"] <= 100.0
    if learner == "anil":
        assert p["batch_norm"].startswith("support set + one query") and p["transductive"] is False
    trained = load_fewshot_run(run)
    assert trained.name == learner and trained.iteration == 2


@pytest.mark.parametrize("learner", ["maml", "metasgd", "lstm-opt"])
def test_regression_learners_on_sinusoid(learner: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["fewshot", learner, *SINUSOID, *TINY, "--out", str(run)]) == 0
    assert f"{learner} test mse:" in capsys.readouterr().out
    report = json.loads((run / "fewshot_evaluation.json").read_text())
    assert report["metric"] == "mse" and report["protocol"]["batch_norm"] == "none (no BatchNorm)"
    assert [seg["to_iteration"] for seg in report["protocol"]["training_segments"]] == [2]
    assert "meta/post_adapt_mse" in _rows(run / "progress.csv")[-1]


def test_resume_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    args = ["fewshot", "metasgd", *SINUSOID, "--eval-every", "2", "--eval-tasks", "2", "--checkpoint-every", "1",
            "--no-test", "true", "--no-progress"]
    assert main([*args, "--iterations", "4", "--out", str(full)]) == 0
    assert main([*args, "--iterations", "2", "--out", str(part)]) == 0
    assert main(["fewshot", "metasgd", "--out", str(part), "--resume", "--iterations", "4", "--no-progress"]) == 0
    a, b = load_checkpoint(full / "checkpoint.pt")["learner"], load_checkpoint(part / "checkpoint.pt")["learner"]
    for k in a["net"]:
        torch.testing.assert_close(a["net"][k], b["net"][k], rtol=0, atol=0)
    for x, y in zip(a["alpha"], b["alpha"], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    ra, rb = _rows(full / "progress.csv"), _rows(part / "progress.csv")
    assert len(ra) == len(rb) == 4
    assert [{k: v for k, v in r.items() if not k.startswith("time/")} for r in ra] == \
        [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rb]


@needs_data
def test_script_and_python_example_classify_new_drawings(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "proto"
    env = {**os.environ, "METARL_CACHE": str(cache)}
    cmd = [sys.executable, str(ROOT / "scripts" / "fewshot.py"), "protonet", *_omniglot(cache), *TINY, "--out",
           str(run)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "protonet test accuracy:" in out.stdout
    monkeypatch.setenv("METARL_CACHE", str(cache))
    monkeypatch.setattr(sys, "argv", ["fewshot_classify.py", str(run), str(DATA)])
    runpy.run_path(str(ROOT / "examples" / "fewshot_classify.py"), run_name="__main__")  # in-process: no 2nd import
    assert "% of 95 new drawings of 5 unseen characters classified from one example each" in capsys.readouterr().out


def _bad(cache: Path) -> list[tuple[list[str], str]]:
    omni = ["--dataset", "omniglot", "--data-dir", str(DATA), "--cache-dir", str(cache)]
    return [
        (["protonett"], "did you mean 'protonet'"),
        (["maml", "--dataset", "sinusoidd"], "did you mean 'sinusoid'"),
        (["maml", "--dataset", "omniglot"], "needs --data-dir"),
        (["maml", "--dataset", "omniglot", "--data-dir", str(cache / "nowhere")], "images_background.zip"),
        (["maml", *omni, "--ways", "5000"], "choose at most"),
        (["maml", *omni, "--shots", "10", "--queries", "15"], "shots + queries = 10 + 15 = 25"),
        (["maml", *omni, "--train-ways", "20"], "--train-ways (20) must equal --ways (5)"),
        (["maml", *omni, "--sources", "images_background_small1"], "use --split random"),
        (["protonet", "--dataset", "sinusoid"], "protonet classifies"),
        (["maml", "--dataset", "sinusoid", "--inner-lr", "-1"], "inner_lr must be > 0, got -1.0"),
        (["maml", "--dataset", "sinusoid", "--batch-norm", "sometimes"], "batch_norm must be one of"),
        (["maml", "--dataset", "sinusoid", "--device", "cuda:9"], "cuda"),
    ]


@needs_data
@pytest.mark.parametrize("case", range(12))
def test_bad_input_gets_one_clear_error_before_any_work(case: int, tmp_path: Path, cache: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    argv, message = _bad(cache)[case]
    assert main(["fewshot", *argv, "--out", str(tmp_path / "X")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "X").exists()


def test_a_diverged_adaptation_is_reported_not_averaged_away() -> None:
    import math

    import numpy as np

    from metarl.fewshot import FewShotEvaluation

    ev = FewShotEvaluation("metasgd", "mse", np.array([[1.0, 0.5, 2.0], [1.0, 0.3, math.inf]]), {})
    assert ev.stats[1].mean == pytest.approx(0.4) and ev.stats[2].mean == math.inf
    assert ev.diverged == [0, 0, 1] and ev.to_dict()["diverged_episodes"] == [0, 0, 1]
