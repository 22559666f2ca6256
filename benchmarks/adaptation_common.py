"""Pieces shared by the adaptation benchmarks (``maml_rl_navigation.py``, ``maml_rl_cartpole.py``).

- :class:`FineTuned`: a policy-gradient fine-tuned baseline with one step size per adaptation step.
- :func:`with_config`: the same learner with other evaluation settings.
- :func:`select`: choose among variants on *validation* tasks (never the test tasks).
- :func:`train_learner`: train through :func:`metarl.training.train` (the loop ``metarl train`` runs)
  and keep per-iteration metrics for the results file.
- :func:`compare_maml_with_baselines`: the whole protocol both MAML-RL benchmarks follow: train MAML-RL,
  the pretrained and oracle baselines on the same number of episodes, select evaluation step sizes on
  validation tasks, evaluate everyone on the same held-out tasks and env seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.agents.maml_rl import MamlRLAgent, MamlRLConfig
from metarl.agents.pretrained import PretrainedAgent, PretrainedConfig
from metarl.agents.random_policy import RandomAgent, RandomConfig
from metarl.evaluation import Curve, evaluate_adaptation
from metarl.learner import AdaptationResult
from metarl.pg import finetune_by_policy_gradient
from metarl.policies import policy_params
from metarl.rollout import TaskEnvs
from metarl.training import TrainConfig, train
from metarl.types import Task


@dataclass(frozen=True)
class FineTuned:
    """A :class:`PretrainedAgent`'s policy fine-tuned exactly as its ``adapt_many`` does, but with step size
    ``lrs[k]`` for step ``k + 1`` (the last repeats) instead of one constant ``adapt_lr``."""

    agent: PretrainedAgent
    lrs: tuple[float, ...]

    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None) -> AdaptationResult:
        a = self.agent
        return finetune_by_policy_gradient(a.policy, policy_params(a.policy), a.envs, tasks, budget,
                                           episodes_per_step or a.config.adapt_episodes, list(self.lrs),
                                           a.config.gamma, seed, a.device)


def with_config(learner: Any, **changes: Any) -> Any:
    """A shallow copy of ``learner`` (same policy) whose config has ``changes``; adaptation reads only the config."""
    other = copy.copy(learner)
    other.config = dataclasses.replace(learner.config, **changes)
    return other


def select(variants: dict[Any, Any], tasks: Sequence[Task], budget: int, episodes: int,
           seed: int) -> tuple[Any, dict[str, float]]:
    """The variant with the best mean return over adaptation steps 1..budget on ``tasks``, and every score."""
    curves = {}
    for k, v in variants.items():
        torch.manual_seed(seed)
        curves.update(evaluate_adaptation({str(k): v}, tasks, budget, episodes, seed))
    scores = {k: float(c.per_task[:, 1:].mean()) if budget > 0 else float(c.per_task.mean())
              for k, c in curves.items()}
    best = max(variants, key=lambda k: scores[str(k)])
    return best, scores


def finetune_grid(agent: PretrainedAgent, first_steps: Sequence[float],
                  later_fractions: Sequence[float]) -> dict[tuple[float, float], FineTuned]:
    """Every (first step, later step = first * fraction) schedule of a fine-tuned baseline."""
    return {(a, round(a * f, 6)): FineTuned(agent, (a, round(a * f, 6))) for a in first_steps for f in later_fractions}


def train_learner(learner: Any, envs: TaskEnvs, iterations: int, seed: int, run_dir: Path,
                  keys: Sequence[str]) -> dict[str, Any]:
    """Train through the standard loop; return the per-iteration training metrics named in ``keys``."""
    history: dict[str, list[float]] = {k: [] for k in (*keys, "rollout/env_steps", "time/iteration_s")}

    def record(iteration: int, metrics: dict[str, float]) -> None:
        for k in history:
            history[k].append(float(metrics.get(k, float("nan"))))

    config = TrainConfig(iterations=iterations, seed=seed, eval_every=0, eval_tasks=10, eval_budget=1,
                         checkpoint_every=max(iterations, 1), threads=1)
    start = time.perf_counter()
    if iterations > 0:
        train(learner, envs, run_dir, config, {"algo": type(learner).__name__, "env": envs.spec,
                                               "env_kwargs": envs.env_kwargs}, progress=False,
              on_iteration=record)
    return {"iterations": iterations, "env_steps": float(np.nansum(history["rollout/env_steps"])),
            "wall_time_s": time.perf_counter() - start,
            "history": {k: [round(v, 4) for v in vs] for k, vs in history.items()}}


@dataclass
class Comparison:
    curves: dict[str, Curve]
    training: dict[str, Any]
    selection: dict[str, Any]
    selection_time_s: float
    evaluation_time_s: float
    horizon: int


def compare_maml_with_baselines(env: str, maml_cfg: MamlRLConfig, pre_cfg: PretrainedConfig, iterations: int,
                                seed: int, n_tasks: int, episodes: int, budget: int, task_seed: int, eval_seed: int,
                                later_fractions: Sequence[float], first_step_grid: Sequence[float],
                                baseline_later_fractions: Sequence[float], oracle_label: str,
                                skip_baselines: bool = False, run_dir: Path | None = None) -> Comparison:
    """Train and evaluate MAML-RL next to its baselines on ``n_tasks`` test tasks of ``env``.

    - ``maml``: :class:`MamlRLAgent` trained for ``iterations`` meta-iterations.
    - ``pretrained``: one :class:`PretrainedAgent` policy trained (PPO) on as many episodes as MAML sampled
      (its ``k`` pre-adaptation batches plus the post-adaptation one), then fine-tuned by policy gradient.
    - ``random initialisation``: an untrained ``PretrainedAgent`` fine-tuned the same way.
    - ``random policy``; and the oracle: a ``PretrainedAgent`` trained on ``oracle=True`` (the task in the
      observation), evaluated without adaptation.

    Evaluation step sizes are chosen on ``n_tasks`` fresh *train*-split tasks by the mean return over
    steps 1..budget: MAML's later steps as ``inner_lr * fraction`` (the first stays ``inner_lr``, the step
    it was meta-trained for); the baselines' first step from ``first_step_grid`` and their later steps as
    a fraction of it. MAML with the released test script's halving is reported too.
    """
    import tempfile

    envs = TaskEnvs(env)
    tasks = envs.sample_tasks(n_tasks, np.random.default_rng(task_seed), split="test")
    training: dict[str, Any] = {}
    oracle: PretrainedAgent | None = None
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = run_dir or Path(tmp_dir)
        maml = MamlRLAgent(envs, maml_cfg, seed=seed)
        training["maml"] = train_learner(
            maml, envs, iterations, seed, tmp / "maml",
            ("rollout/pre_adapt_return", "rollout/post_adapt_return", "train/kl", "train/line_search_steps"))
        learners: dict[str, Any] = {"maml": maml}
        if not skip_baselines:
            base_iterations = iterations * (maml_cfg.num_inner_steps + 1) * maml_cfg.fast_batch_size \
                // pre_cfg.episodes_per_task
            pretrained = PretrainedAgent(envs, pre_cfg, seed=seed)
            training["pretrained"] = train_learner(pretrained, envs, base_iterations, seed, tmp / "pretrained",
                                                   ("rollout/return_mean",))
            oracle_envs = TaskEnvs(env, {"oracle": True})
            oracle = PretrainedAgent(oracle_envs, pre_cfg, seed=seed)
            training["oracle"] = train_learner(oracle, oracle_envs, base_iterations, seed, tmp / "oracle",
                                               ("rollout/return_mean",))
            learners["pretrained"] = pretrained
            learners["random initialisation"] = PretrainedAgent(envs, pre_cfg, seed=seed + 10_000)
            learners["random policy"] = RandomAgent(envs, RandomConfig(), seed=seed)
    t0 = time.perf_counter()
    val_tasks = envs.sample_tasks(n_tasks, np.random.default_rng(task_seed + 1), split="train")
    selection: dict[str, Any] = {}
    lr = maml_cfg.inner_lr
    fraction, scores = select({f: with_config(maml, eval_lrs=(lr, lr * f)) for f in later_fractions},
                              val_tasks, budget, episodes, eval_seed + 1)
    selection["maml"] = {"later_step_fraction_of_inner_lr": fraction, "eval_lrs": [lr, lr * fraction],
                         "validation_scores": scores}
    evaluated: dict[str, Any] = {"maml": with_config(maml, eval_lrs=(lr, lr * fraction)),
                                 "maml (later steps inner_lr/2)": with_config(maml, eval_lrs=(lr, lr / 2))}
    for name in ("pretrained", "random initialisation"):
        if name in learners:
            grid = finetune_grid(learners[name], first_step_grid, baseline_later_fractions)
            lrs, scores = select(grid, val_tasks, budget, episodes, eval_seed + 1)
            selection[name] = {"eval_lrs": list(lrs), "validation_scores": scores}
            evaluated[name] = grid[lrs]
    evaluated.update({k: v for k, v in learners.items() if k not in evaluated})
    selection_time = time.perf_counter() - t0
    t0 = time.perf_counter()
    curves: dict[str, Curve] = {}
    for name, learner in evaluated.items():  # the same torch seed for each: common random numbers
        torch.manual_seed(eval_seed)
        curves.update(evaluate_adaptation({name: learner}, tasks, budget, episodes, eval_seed))
    if oracle is not None:
        torch.manual_seed(eval_seed)
        curves[oracle_label] = evaluate_adaptation({"oracle": oracle}, tasks, 0, episodes, eval_seed)["oracle"]
    return Comparison(curves, training, selection, selection_time, time.perf_counter() - t0, envs.horizon)


def machine_line(d: dict[str, Any], extras: Sequence[str] = ()) -> str:
    """``cpu, cores, torch[, extras], wall time; commit`` of a results file (for README tables)."""
    m, p = d["provenance"]["machine"], d["provenance"]
    gpu = f", {m['cuda_device']}" if m.get("cuda_device") else ""
    wall = p.get("wall_time_s")
    wall_s = f", {wall / 60:.0f} min" if isinstance(wall, (int, float)) else ""
    extra_s = "".join(f", {x}" for x in extras)
    dirty = " with uncommitted changes" if p["commit"].endswith("-dirty") else ""
    return (f"{m['cpu']}, {m['cpu_count']} cores{gpu}, torch {m['torch']}{extra_s}{wall_s}; "
            f"commit {p['commit'][:7]}{dirty}")


def curve_table(d: dict[str, Any], paper: dict[str, Sequence[float]] | None = None) -> list[str]:
    """Markdown rows ``learner | step 0 | step 1 | ...`` (mean ± 95% CI, the paper's value in brackets)."""
    budget = int(d["setup"]["budget"])
    lines = ["| learner | " + " | ".join(f"{k} steps" for k in range(budget + 1)) + " |",
             "| --- |" + " --- |" * (budget + 1)]
    for name, c in d["curves"].items():
        ref = (paper or {}).get(name, [])
        cells = [f"{m:.1f} ± {ci:.1f}" + (f" ({ref[k]})" if k < len(ref) else "")
                 for k, (m, ci) in enumerate(zip(c["mean"], c["ci95"], strict=True))]
        lines.append(f"| {name} | " + " | ".join(cells + [""] * (budget + 1 - len(cells))) + " |")
    return lines
