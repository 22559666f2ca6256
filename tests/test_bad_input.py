"""The bad-input corpus: every entry gets one clear error from the command line, before any work starts.

Each row is a command line and the fragments its error must contain (the value, what was expected, the
fix or a "did you mean"). For every row: exit status 2, no traceback, and nothing written into the run
folder. Python-level checks of the same validation live beside each module's tests (configs, the task
family checker, checkpoints); this file is the user's view of all of them.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from metarl.cli import main

OUT = ["--out", "run"]
TINY = ["--iterations", "1", "--meta-batch-size", "2", "--eval-tasks", "2", "--no-progress"]

BAD_FAMILIES = '''
import gymnasium
import numpy as np
from dataclasses import dataclass
from typing import ClassVar

from metarl.tasks import TaskFamily
from metarl.types import Task


@dataclass(frozen=True)
class Mass(Task):
    family: ClassVar[str] = "bad-input-mass"
    mass: float


def sample(rng):
    return Mass(float(rng.uniform(0.5, 2.0)))


def ignore_task(env, task):
    pass


no_effect = TaskFamily("Pendulum-v1", sample=sample, set_task=ignore_task)


class DictObs(gymnasium.Env):
    """A task family whose observations are a Dict: no agent here reads them without flattening."""

    observation_space = gymnasium.spaces.Dict({"x": gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32)})
    action_space = gymnasium.spaces.Discrete(2)
    spec = None

    def __init__(self):
        self.task = Mass(1.0)

    def sample_tasks(self, n, rng=None, split="train"):
        from metarl.tasks import sample_split
        return sample_split(lambda g: Mass(float(g.uniform(0.5, 2.0))), n, rng, split)

    def set_task(self, task):
        self.task = task

    def get_task(self):
        return self.task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        if options and "task" in options:
            self.task = options["task"]
        return {"x": np.full(2, self.task.mass / 2, np.float32)}, {}

    def step(self, action):
        obs = {"x": np.clip(self.np_random.uniform(-1, 1, 2) * self.task.mass, -1, 1).astype(np.float32)}
        return obs, float(action) * self.task.mass, False, False, {}
'''

CASES: list[tuple[str, list[str], list[str]]] = [
    # name, argv, fragments the message must contain
    ("unknown command", ["trian"], ["'trian'", "did you mean 'train'"]),
    ("unknown algorithm", ["train", "pretrianed", *OUT], ["'pretrianed'", "did you mean 'pretrained'"]),
    ("unknown env id", ["train", "pretrained", *OUT, "--env", "metarl/Navigation2d-v0"],
     ["metarl/Navigation2d-v0", "did you mean 'metarl/Navigation2D-v0'"]),
    ("env module missing", ["train", "pretrained", *OUT, "--env", "nosuchpackage.envs:Family"],
     ["nosuchpackage"]),
    ("env object missing", ["train", "pretrained", *OUT, "--env", "badfamilies:NoSuchFamily"],
     ["NoSuchFamily", "badfamilies"]),
    ("unknown env argument", ["train", "pretrained", *OUT, "--env-kwarg", "foo=1"],
     ["foo", "metarl/Navigation2D-v0 does not accept"]),
    ("malformed env argument", ["train", "pretrained", *OUT, "--env-kwarg", "oracle"],
     ["expects KEY=VALUE", "'oracle'"]),
    ("zero meta-batch", ["train", "pretrained", *OUT, "--meta-batch-size", "0"],
     ["meta_batch_size must be >= 1, got 0"]),
    ("negative episodes", ["train", "maml-rl", *OUT, "--fast-batch-size", "-3"],
     ["fast_batch_size must be >= 1, got -3"]),
    ("zero inner step", ["train", "maml-rl", *OUT, "--inner-lr", "0"], ["inner_lr must be > 0, got 0"]),
    ("negative step size", ["train", "pretrained", *OUT, "--adapt-lr", "-1"], ["adapt_lr must be > 0, got -1"]),
    ("zero KL bound", ["train", "maml-rl", *OUT, "--max-kl", "0"], ["max_kl must be > 0, got 0"]),
    ("unknown outer optimiser", ["train", "maml-rl", *OUT, "--outer", "sgd"], ["outer must be one of", "'sgd'"]),
    ("discount above one", ["train", "pretrained", *OUT, "--gamma", "1.5"], ["gamma must be in (0, 1], got 1.5"]),
    ("zero hidden units", ["train", "pretrained", *OUT, "--hidden", "64", "0"], ["hidden sizes must be >= 1", "0"]),
    ("non-numeric size", ["train", "maml-rl", *OUT, "--hidden", "abc"], ["hidden must be int, got 'abc'"]),
    ("fractional count", ["train", "pretrained", *OUT, "--meta-batch-size", "2.5"], ["meta_batch_size", "'2.5'"]),
    ("not a boolean", ["train", "maml-rl", *OUT, "--first-order", "maybe"], ["first_order must be true or false",
                                                                           "'maybe'"]),
    ("negative iterations", ["train", "pretrained", *OUT, "--iterations", "-1"], ["iterations must be >= 0, got -1"]),
    ("non-numeric iterations", ["train", "pretrained", *OUT, "--iterations", "ten"], ["iterations must be int",
                                                                                      "'ten'"]),
    ("zero eval tasks", ["train", "pretrained", *OUT, "--eval-tasks", "0"], ["eval_tasks must be >= 1, got 0"]),
    ("zero checkpoint period", ["train", "pretrained", *OUT, "--checkpoint-every", "0"],
     ["checkpoint_every must be >= 1, got 0"]),
    ("zero threads", ["train", "pretrained", *OUT, "--threads", "0"], ["threads must be >= 1, got 0"]),
    ("device that does not exist", ["train", "pretrained", *OUT, "--device", "cuda:7"], ["'cuda:7'", "--device cpu"]),
    ("device of no kind", ["train", "pretrained", *OUT, "--device", "tpu"], ["device must be", "'tpu'"]),
    ("missing preset file", ["train", "pretrained", *OUT, "--config", "nope.json"], ["'nope.json'", "does not exist"]),
    ("preset with unknown key", ["train", "pretrained", *OUT, "--config", "unknown_key.json"],
     ["'adapt_lrr'", "did you mean 'adapt_lr'"]),
    ("preset not JSON", ["train", "pretrained", *OUT, "--config", "not_json.json"], ["not valid JSON"]),
    ("preset not an object", ["train", "pretrained", *OUT, "--config", "a_list.json"], ["must hold a JSON object"]),
    ("preset with a bad value", ["train", "maml-rl", *OUT, "--config", "bad_value.json"],
     ["inner_lr must be > 0, got -0.1"]),
    ("family whose tasks change nothing", ["train", "pretrained", *OUT, "--env", "badfamilies:no_effect"],
     ["does not change", "set_task"]),
    ("observations an agent cannot read", ["train", "pretrained", *OUT, "--env", "badfamilies:DictObs", *TINY],
     ["observation space", "Dict", "FlattenObservation"]),
    ("resume of nothing", ["train", "pretrained", *OUT, "--resume"], ["cannot resume", "config.json"]),
    ("evaluate a folder without a run", ["evaluate", "nowhere"], ["no checkpoint in nowhere", "metarl train"]),
    ("evaluate a corrupt checkpoint", ["evaluate", "corrupt"], ["corrupt/checkpoint.pt", "truncated or corrupt"]),
    ("evaluate a pickle that runs code", ["evaluate", "malicious"],
     ["refusing to load malicious/checkpoint.pt", "nothing in it was executed"]),
    ("evaluate zero tasks", ["evaluate", "corrupt", "--tasks", "0"], ["--tasks >= 1", "got 0"]),
    ("evaluate an unknown split", ["evaluate", "corrupt", "--split", "validation"], ["'validation'", "test"]),
    ("evaluate an unknown baseline", ["evaluate", "corrupt", "--baselines", "scrach"], ["did you mean 'scratch'"]),
    ("evaluate on a device of no kind", ["evaluate", "corrupt", "--device", "tpu"], ["device must be", "'tpu'"]),
]


class _RunsCode:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("this must never run",))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "badfamilies.py").write_text(BAD_FAMILIES)
    (tmp_path / "unknown_key.json").write_text(json.dumps({"adapt_lrr": 0.1}))
    (tmp_path / "not_json.json").write_text("{inner_lr: 0.1")
    (tmp_path / "a_list.json").write_text("[0.1]")
    (tmp_path / "bad_value.json").write_text(json.dumps({"inner_lr": -0.1}))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "checkpoint.pt").write_bytes(b"PK\x03\x04 this is not a checkpoint")
    (tmp_path / "malicious").mkdir()
    (tmp_path / "malicious" / "checkpoint.pt").write_bytes(pickle.dumps({"learner": _RunsCode()}))
    return tmp_path


@pytest.mark.parametrize("argv, fragments", [pytest.param(a, f, id=n) for n, a, f in CASES])
def test_bad_input_gets_one_clear_error_before_any_work(argv: list[str], fragments: list[str], workdir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err and "this must never run" not in captured.out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got: {err}"
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"
    run = workdir / "run"
    assert not (run / "checkpoint.pt").exists() and not (run / "progress.csv").exists()


def test_the_corpus_is_large() -> None:
    assert len(CASES) >= 40
