"""The training loop shared by every learner: progress bar, logging, evaluation cadence,
atomic checkpoints, exact resume, clean Ctrl-C.

Determinism: every iteration derives its randomness from ``(seed, iteration)`` alone (the task
batch from ``numpy.random.default_rng([seed, iteration])``, torch's sampling from a seed set at the
start of the iteration, env seeds from the learner's step counter). A run resumed from the
checkpoint of iteration ``i`` therefore replays iterations ``i+1, ...`` exactly as an
uninterrupted run would, on the same device.

Task sources. ``envs`` is anything with ``sample_tasks(n, rng, split)``: the RL task envs
(:class:`~metarl.rollout.TaskEnvs`) or a few-shot episode source (:mod:`metarl.fewshot`), whose tasks
are support/query episodes. The periodic held-out check adapts to the ``test`` split, or to the split a
source names in ``held_out_split`` (few-shot data sets check on their ``val`` classes, so the test
classes stay untouched until the final evaluation). It logs ``meta/pre_adapt_<m>``,
``meta/post_adapt_<m>`` and ``meta/adaptation_gain`` (post minus pre), where ``m`` is ``return`` for RL
learners (``AdaptationResult.stage_returns``) and the metric a supervised result names
(``result.metric``, e.g. ``accuracy`` or ``mse``, with the curve in ``result.stage_values``).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from metarl.checkpoint import load_checkpoint, rng_state, save_checkpoint
from metarl.config import config_to_dict, option, require_at_least
from metarl.logging import CONFIG_NAME, Logger
from metarl.provenance import STARTUP_COMMIT  # the commit of the code Python loaded, captured at import

CHECKPOINT = "checkpoint.pt"
# One JSON line per launch of a run (the first and each --resume): the iteration it started from, the
# commit of the code that trained it, when and on what. A run trained over several sessions names each.
SEGMENTS = "segments.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = option(100, "number of meta-training iterations (outer updates)")
    seed: int = option(0, "seed of tasks, env resets and torch sampling")
    eval_every: int = option(10, "iterations between held-out adaptation checks (0: only at the end)")
    eval_tasks: int = option(10, "held-out test tasks in each check")
    eval_budget: int = option(1, "adaptation steps in each check")
    checkpoint_every: int = option(10, "iterations between checkpoints (always one at the end)")
    device: str = option("cpu", "torch device: cpu, cuda or cuda:N")
    threads: int = option(1, "torch CPU threads; 1 is fastest for small RL networks (thread sync costs more "
                             "than their matmuls, and far more on a busy machine)")

    def __post_init__(self) -> None:
        require_at_least(self, 0, "iterations", "eval_every", "eval_budget")
        require_at_least(self, 1, "eval_tasks", "checkpoint_every", "threads")
        check_device(self.device)


def check_device(device: str) -> None:
    """Fail before any work if ``device`` cannot be used here."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type != "cpu":
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def iteration_seed(seed: int, iteration: int) -> int:
    return (seed * 1_000_003 + iteration * 7919 + 17) % (2**31)


class TaskSource(Protocol):
    """What the loop needs from a task distribution: :class:`~metarl.rollout.TaskEnvs` is one."""

    def sample_tasks(self, n: int, rng: np.random.Generator, split: str = "train") -> list[Any]: ...


def held_out_tasks(envs: TaskSource, n: int, seed: int) -> list[Any]:
    """The fixed held-out tasks the training loop checks adaptation on (``test`` split, or the source's
    ``held_out_split``)."""
    split = getattr(envs, "held_out_split", "test")
    return envs.sample_tasks(n, np.random.default_rng([seed, 2**20]), split=split)


def adaptation_metrics(result: Any) -> dict[str, float]:
    """The held-out check's metrics from an adaptation result: ``[n_tasks, budget + 1]`` stage values."""
    metric = getattr(result, "metric", "return")
    curve = np.asarray(result.stage_returns if metric == "return" else result.stage_values, dtype=np.float64)
    pre, post = float(curve[:, 0].mean()), float(curve[:, -1].mean())
    return {f"meta/pre_adapt_{metric}": pre, f"meta/post_adapt_{metric}": post, "meta/adaptation_gain": post - pre}


def non_finite_tensors(state: Any, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict holding NaN or inf.

    Checked after every update so that a step that broke the parameters (e.g. an exploding
    gradient whose loss was still finite) never reaches a checkpoint.
    """
    if isinstance(state, torch.Tensor):
        return [prefix or "tensor"] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    if isinstance(state, dict):
        return [name for k, v in state.items() for name in non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(state, (list, tuple)):
        return [name for i, v in enumerate(state) for name in non_finite_tensors(v, f"{prefix}[{i}]")]
    return []


class _StopFlag:
    """SIGINT sets a flag; the loop stops at the next iteration boundary with a checkpoint."""

    def __init__(self) -> None:
        self.stop = False

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.stop:  # a second Ctrl-C: the user insists
            raise KeyboardInterrupt
        self.stop = True


def train(learner: Any, envs: TaskSource, run_dir: str | Path, config: TrainConfig, run_info: dict[str, Any],
          resume: bool = False, progress: bool = True,
          on_iteration: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, float]:
    """Meta-train ``learner`` for ``config.iterations`` outer updates; return the last logged metrics.

    ``run_info`` (algorithm name and config, env spec) is stored in every checkpoint and in the
    run's ``config.json`` so ``metarl evaluate RUN`` and ``--resume`` can rebuild everything.
    """
    torch.set_num_threads(config.threads)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / CHECKPOINT
    start = 0
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        learner.load_state_dict(state["learner"])
        start = int(state["iteration"])
    elif resume:
        # Killed before its first checkpoint: the run's config.json exists, its progress is at most a
        # few logged rows. The learner was just built from the same config and seed, so starting at
        # iteration 0 (dropping those rows) replays exactly what an uninterrupted run does.
        if not (run / CONFIG_NAME).exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path} and no {CONFIG_NAME} in {run}; "
                                    "start the run without --resume")
        warnings.warn(f"{run} was interrupted before its first checkpoint; restarting it from iteration 0",
                      stacklevel=2)
    elif ckpt_path.exists():
        raise FileExistsError(f"{run} already holds a run (checkpoint.pt); pass --resume to continue it, "
                              "or choose another --out")
    logger = Logger(run, resume_step=start if resume else None)
    if start == 0:
        logger.log_hparams({**run_info, "train": config_to_dict(config)})
    _record_segment(run, start, config)
    eval_tasks = held_out_tasks(envs, config.eval_tasks, config.seed)
    meta_batch = int(learner.config.meta_batch_size)
    stop = _StopFlag()
    previous_handler = signal.signal(signal.SIGINT, stop) if _main_thread() else None
    metrics: dict[str, float] = {}
    bar = tqdm(total=config.iterations, initial=start, disable=not progress, desc="meta-train", unit="it",
               file=sys.stderr, mininterval=2.0)
    iteration = start
    try:
        for iteration in range(start, config.iterations):
            seed = iteration_seed(config.seed, iteration)
            torch.manual_seed(seed)
            tasks = envs.sample_tasks(meta_batch, np.random.default_rng([config.seed, iteration]), split="train")
            t0 = time.perf_counter()
            metrics = dict(learner.meta_train_step(tasks))
            dt = time.perf_counter() - t0
            bad = [k for k, v in metrics.items() if not math.isfinite(v)] + non_finite_tensors(learner.state_dict())
            if bad:
                raise FloatingPointError(
                    f"non-finite metric(s) or parameter(s) {bad[:5]} at iteration {iteration + 1}; the last good "
                    f"checkpoint ({ckpt_path}) is kept. Lower the learning rate or step size and resume with --resume.")
            metrics["time/iteration_s"] = dt
            if "rollout/env_steps" in metrics:
                metrics["time/steps_per_s"] = metrics["rollout/env_steps"] / max(dt, 1e-9)
            last = iteration + 1 == config.iterations
            if (config.eval_every and (iteration + 1) % config.eval_every == 0) or last:
                torch.manual_seed(seed + 1)
                metrics.update(adaptation_metrics(learner.adapt_many(eval_tasks, config.eval_budget, seed=seed + 2)))
            for k, v in metrics.items():
                logger.record(k, v)
            logger.dump(iteration + 1)
            if (iteration + 1) % config.checkpoint_every == 0 or last or stop.stop:
                _save(ckpt_path, learner, iteration + 1, run_info, config)
            bar.update(1)
            # refresh=False: the bar redraws at its mininterval, not once per (possibly 100 Hz) iteration
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in metrics.items()
                             if k == "rollout/return_mean" or k.startswith("meta/post_adapt_")}, refresh=False)
            if on_iteration is not None:
                on_iteration(iteration + 1, metrics)
            if stop.stop:
                logger.close()
                bar.close()
                print(f"\ninterrupted after iteration {iteration + 1}; checkpoint saved. "
                      f"Resume with the same command plus --resume (run folder: {run})", file=sys.stderr)
                raise KeyboardInterrupt
    finally:
        bar.close()
        logger.close()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    return metrics


def _record_segment(run: Path, start: int, config: TrainConfig) -> None:
    """Append this launch to the run's ``segments.jsonl`` (flushed to disk before training starts)."""
    line = {"from_iteration": start, "to_iteration": config.iterations, "commit": STARTUP_COMMIT,
            "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "device": config.device}
    # One write call in append mode: a kill leaves the line whole or absent, never half of it.
    fd = os.open(run / SEGMENTS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def read_segments(run_dir: str | Path) -> list[dict[str, Any]]:
    """The launches of a run, oldest first (empty for a run made before ``segments.jsonl`` was written). A run
    killed and resumed from an earlier checkpoint lists each launch, so ``from_iteration`` may repeat."""
    path = Path(run_dir) / SEGMENTS
    if not path.exists():
        return []
    segments = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            segments.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not a JSON object ({err}); each line records one launch "
                             "of the run, delete the broken line to read the others") from err
    return segments


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _save(path: Path, learner: Any, iteration: int, run_info: dict[str, Any], config: TrainConfig) -> None:
    save_checkpoint(path, {"iteration": iteration, "learner": learner.state_dict(), "run_info": run_info,
                           "train": config_to_dict(config), "rng": rng_state()})
