"""RL² and MANN on Bernoulli bandits (RL², Duan et al. 2016, Table 1), next to the Gittins index.

Setup (the bandit section of ``docs/BENCHMARKS.md``): ``k`` arms with ``p_i ~ U[0, 1]``, one trial = ``n``
pulls of one bandit (``metarl/Bandit-v0`` with ``n_pulls = n``; a trial is one env episode). The agent
(``agents/rl2.py`` or ``agents/mann.py``) is meta-trained on *train* bandits through ``metarl.training.train``,
then evaluated on the 1000 *test* bandits of ``benchmarks/bandit_baselines.py``
(``BanditEnv(n_arms=k).sample_tasks(1000, default_rng(0), split="test")``) with the same reward stream
(reward seed 0: bandit ``b``'s pull ``t`` pays ``uniform(key(b), t) < p``), so the agent and the classical
strategies of :mod:`metarl.bandits` face identical bandits and identical reward draws. Reported: mean ±
95% CI over the 1000 bandits of the total reward of one trial (actions sampled from the policy), the
Gittins index (discount ``1 - 1/n``) and UCB1 / Thompson / greedy on the same bandits, and the paired
difference agent − Gittins per bandit with its 95% CI (the test of "at or above Gittins"); also the same
paired difference with the policy's most likely arm at every pull (``greedy``), a second protocol, not the
headline number.

Run (one agent and setting per call; each call merges its entry into the results file)::

    python benchmarks/rl2_bandits.py --agent rl2 --n 100 --k 5 --iterations 600
    python benchmarks/rl2_bandits.py --quick          # seconds: a tiny run into a temporary file

The training budget is what fits on 2 shared CPU cores; the paper trained far longer (TRPO, 250k
steps per iteration). Every entry records its iterations, env steps, wall time and training curve,
and says ``"reduced": true`` when it is below the paper's budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from adaptation_common import machine_line

from metarl.bandits import UCB1, Gittins, Greedy, Thompson, exploration_profile, play
from metarl.checkpoint import load_checkpoint
from metarl.cli import _algorithms, _parse_env_kwargs, build_learner
from metarl.config import config_from_dict, config_to_dict
from metarl.envs.bandit import BanditEnv
from metarl.logging import CONFIG_NAME, read_progress
from metarl.provenance import write_results
from metarl.stats import mean_ci95
from metarl.training import TrainConfig, read_segments, train

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_bandits.json"
PAPER = {(10, 5): {"rl2": 6.7, "gittins": 6.6}, (100, 5): {"rl2": 78.7, "gittins": 78.3},
         (100, 10): {"rl2": 83.5, "gittins": 82.8}}
PAPER_STEPS = "TRPO, 250k env steps per iteration (RL² appendix); the paper does not state the iteration count"


class TrainedRun(NamedTuple):
    """What :func:`train_memory_learner` returns: the learner, its ``TaskEnvs``, the per-iteration metrics, the
    training wall time, the iteration a resumed run continued from (``None``: trained in one go) and a resumed
    run's launches (its ``segments.jsonl``: the commit that trained each segment)."""

    learner: Any
    envs: Any
    curve: list[dict[str, float]]
    wall: float
    resumed_from: int | None
    segments: tuple[dict[str, Any], ...] = ()


def train_memory_learner(algo: str, env: str, env_kwargs: dict[str, Any], algo_config: dict[str, Any],
                         iterations: int, seed: int, eval_every: int, eval_tasks: int,
                         eval_budget: int, run_dir: Path | None = None, resume: bool = False,
                         init: Path | None = None) -> TrainedRun:
    """Meta-train ``algo`` through the shared training loop.

    ``run_dir=None`` trains in a temporary folder. Otherwise the run is kept there (a checkpoint at every
    periodic check, ``progress.csv``, ``config.json``: ``metarl evaluate DIR`` loads it), and ``resume``
    continues it from its last checkpoint; the resumed run equals an uninterrupted one (the training loop's
    guarantee). Its curve then starts with the earlier segments' logged rows (without the load average), and
    its wall time adds their iteration times (their periodic checks not counted) to this segment's.
    ``init``: start from the model weights in this file (:func:`load_init_weights`) instead of a fresh model;
    a resumed run continues from its own checkpoint.
    """
    learner, envs = build_learner(algo, env, env_kwargs, algo_config, seed, "cpu")
    if init is not None:
        load_init_weights(learner, init)
    curve: list[dict[str, float]] = []

    def record(iteration: int, metrics: dict[str, float]) -> None:
        # The machine is shared: the 1-minute load average beside each iteration explains its timing.
        curve.append({"iteration": iteration, **{k: float(v) for k, v in metrics.items()},
                      "load_1min": os.getloadavg()[0]})
        if iteration % 10 == 0 or "meta/pre_adapt_return" in metrics:
            shown = {k.split("/")[-1]: round(v, 3) for k, v in metrics.items()
                     if k in ("rollout/return_mean", "meta/pre_adapt_return", "meta/post_adapt_return",
                              "train/entropy", "time/iteration_s")}
            print(f"[{algo} {env}] iteration {iteration}/{iterations} {shown}", file=sys.stderr, flush=True)

    config = TrainConfig(iterations=iterations, seed=seed, eval_every=eval_every, eval_tasks=eval_tasks,
                         eval_budget=eval_budget,
                         checkpoint_every=max(iterations, 1) if run_dir is None else max(eval_every, 1))
    info = {"algo": algo, "algo_config": algo_config, "env": env, "env_kwargs": env_kwargs}
    t0 = time.perf_counter()
    if run_dir is None:
        with tempfile.TemporaryDirectory() as run:
            train(learner, envs, run, config, info, progress=False, on_iteration=record)
        return TrainedRun(learner, envs, curve, time.perf_counter() - t0, None)
    if resume:
        _check_same_run(run_dir, info, config)
    train(learner, envs, run_dir, config, info, resume=resume, progress=False, on_iteration=record)
    wall = time.perf_counter() - t0
    first = curve[0]["iteration"] if curve else iterations + 1
    earlier = [{"iteration": int(row.pop("step")), **row} for row in read_progress(run_dir) if row["step"] < first]
    if not earlier:
        return TrainedRun(learner, envs, curve, wall, None)
    wall += sum(row.get("time/iteration_s", 0.0) for row in earlier)
    return TrainedRun(learner, envs, earlier + curve, wall, int(earlier[-1]["iteration"]),
                      tuple(read_segments(run_dir)))


def load_init_weights(learner: Any, path: Path) -> None:
    """Load the model weights of ``path`` (a ``{"model": state_dict, ...}`` file such as
    ``rl2_bandit_imitation.py --save`` writes, or a kept run's ``checkpoint.pt``, read with ``weights_only``) into
    ``learner.model``; the optimizer, the schedules and the iteration count start fresh. A model of another shape
    is refused with the names that differ."""
    state = load_checkpoint(path)
    if "model" not in state and "model" in state.get("learner", {}):  # a training run's checkpoint
        state = {**state["learner"], "algo_config": state.get("run_info", {}).get("algo_config")}
    if "model" not in state:
        raise SystemExit(f"--init {path}: the file holds no 'model' weights (keys: {sorted(state)}); give a file "
                         "written by rl2_bandit_imitation.py --save or a run's checkpoint.pt")
    ours, theirs = learner.model.state_dict(), state["model"]
    differ = sorted(k for k in {*ours, *theirs} if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if differ:
        raise SystemExit(f"--init {path}: its model does not fit this agent's ({', '.join(differ[:6])} differ); "
                         f"build both with the same agent config (the file's: {state.get('algo_config')})")
    learner.model.load_state_dict(theirs)


def evaluation_trials(learner: Any, tasks: list[Any]) -> Any:
    """One sampled trial per test bandit with the evaluation's draws (torch seed 0, reward seed 0): the trials
    ``adapt_many(tasks, 0, seed=0, episodes_per_step=1)`` runs, collected directly for the arms pulled as well as
    the rewards (``TrialBatch``, ``[T, B]``)."""
    torch.manual_seed(0)
    return learner.collect(tasks, 1, 1, seed=0)


def _check_same_run(run_dir: Path, info: dict[str, Any], config: TrainConfig) -> None:
    """Fail before training when ``--resume`` would continue a run made with other settings (only the
    iteration count may change: a run can be extended)."""
    path = run_dir / CONFIG_NAME
    if not path.exists():
        raise SystemExit(f"--resume: {run_dir} holds no run ({CONFIG_NAME} missing); drop --resume to start one there")
    stored = json.loads(path.read_text())
    ours = json.loads(json.dumps({**info, "train": config_to_dict(config)}))

    def whole(cls: Any, values: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(config_to_dict(config_from_dict(cls, values))))

    # Compared as whole configs: an option added since the run was made takes its default, which is what the
    # run used (it resumes); an option set to its default explicitly or not at all compares equal.
    if stored.get("algo") == info["algo"]:
        algo_cls = _algorithms()[info["algo"]][0]
        stored["algo_config"], ours["algo_config"] = (whole(algo_cls, stored.get("algo_config", {})),
                                                      whole(algo_cls, ours["algo_config"]))
    stored["train"] = whole(TrainConfig, stored.get("train", {}))
    differ = sorted(k for k in {*ours, *stored} - {"train", "algo_config"} if stored.get(k) != ours.get(k))
    differ += sorted(f"algo_config.{k}" for k in {*ours.get("algo_config", {}), *stored.get("algo_config", {})}
                     if stored.get("algo_config", {}).get(k) != ours.get("algo_config", {}).get(k))
    differ += sorted(f"train.{k}" for k in ours["train"] if k != "iterations"
                     and stored.get("train", {}).get(k) != ours["train"][k])
    if differ:
        raise SystemExit(f"--resume: the run in {run_dir} was made with other settings ({', '.join(differ)} differ); "
                         "rerun with its options (see its config.json) or choose another --run-dir")


def compact_curve(curve: list[dict[str, float]], keys: tuple[str, ...]) -> list[dict[str, float]]:
    """The named metrics of every iteration (the results file keeps the training curve, not every metric)."""
    return [{k: row[k] for k in ("iteration", *keys, "load_1min") if k in row} for row in curve]


def _paired(a: np.ndarray, b: np.ndarray) -> dict[str, float | int]:
    return mean_ci95(a - b).to_dict()


def run_setting(agent: str, n_pulls: int, n_arms: int, iterations: int, seed: int, n_test: int,
                overrides: dict[str, Any], run_dir: Path | None = None, resume: bool = False,
                init: Path | None = None) -> dict[str, Any]:
    config = config_from_dict(_algorithms()[agent][0], {"episodes_per_trial": 1, **overrides})
    env_kwargs = {"n_arms": n_arms, "n_pulls": n_pulls}
    run = train_memory_learner(agent, "metarl/Bandit-v0", env_kwargs, config_to_dict(config), iterations, seed,
                               eval_every=max(iterations // 20, 1), eval_tasks=200, eval_budget=0,
                               run_dir=run_dir, resume=resume, init=init)
    learner, curve, wall = run.learner, run.curve, run.wall
    tasks = BanditEnv(n_arms=n_arms).sample_tasks(n_test, np.random.default_rng(0), split="test")
    probs = np.array([t.probs for t in tasks])
    t0 = time.perf_counter()
    batch = evaluation_trials(learner, tasks)
    ours = batch.rewards.sum(0).cpu().numpy().astype(np.float64)
    agent_arms = batch.actions.cpu().numpy().astype(np.int64).T  # [bandits, pulls]
    eval_s = time.perf_counter() - t0
    # The same bandits and reward draws with the most likely arm at every pull (a deterministic policy of
    # the history, as the Gittins index is): what the policy's leftover randomness costs or gains.
    greedy = learner.adapt_many(tasks, 0, seed=0, episodes_per_step=1, greedy=True).stage_returns[:, 0]
    classical = {"gittins": Gittins(), "ucb1": UCB1(c=0.2), "thompson": Thompson(), "greedy": Greedy(tie_break="first")}
    trials = {name: play(s, probs, n_pulls, seed=0) for name, s in classical.items()}
    totals = {name: trial.total_reward for name, trial in trials.items()}
    arms = {agent: agent_arms, **{name: trial.arms for name, trial in trials.items()}}
    env_steps = sum(row.get("rollout/env_steps", 0.0) for row in curve)
    return {
        "agent": agent, "n_pulls": n_pulls, "n_arms": n_arms,
        "config": config_to_dict(config), "iterations": iterations, "train_env_steps": env_steps,
        "train_wall_time_s": wall, "eval_wall_time_s": eval_s, **resume_fields(run),
        **({"init": str(init)} if init is not None else {}),
        "env_steps_per_s": env_steps / max(wall, 1e-9),
        "reduced": True, "reduced_note": f"{iterations} iterations x {config.meta_batch_size} trials on 2 shared CPU "
                                         f"cores; paper: {PAPER_STEPS}",
        "test": {"n_bandits": n_test, "split": "test", "task_seed": 0, "reward_seed": 0},
        "result": mean_ci95(ours).to_dict(),
        "baselines": {name: mean_ci95(v).to_dict() for name, v in totals.items()},
        "minus_gittins": _paired(ours, totals["gittins"]),
        "result_greedy": mean_ci95(greedy).to_dict(),
        "greedy_minus_gittins": _paired(greedy, totals["gittins"]),
        "at_or_above_gittins": bool(ours.mean() >= totals["gittins"].mean()),
        "paper": PAPER.get((n_pulls, n_arms), {}),
        "best_arm_total": float(n_pulls * probs.max(axis=1).mean()),
        "exploration": {name: {k: mean_ci95(v).to_dict() for k, v in exploration_profile(a, probs).items()}
                        for name, a in arms.items()},
        "curve": compact_curve(curve, ("rollout/return_mean", "meta/pre_adapt_return", "train/entropy",
                                       "train/entropy_coef", "time/iteration_s")),
    }


def plot_training(entries: dict[str, dict[str, Any]], path: Path, reference: str, key: str, setting: str) -> Path:
    """One panel per setting: every agent's mean training-trial return against env steps, and the agent's
    test score and the named ``reference`` of its entry (e.g. Gittins) as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries.values():
        groups.setdefault(setting.format(**e), []).append(e)
    # The legends go below the panels (two lines per entry): a panel of many entries stays readable.
    lines = 2 * max(len(g) for g in groups.values()) + 1
    fig, axes = plt.subplots(1, len(groups), figsize=(5.0 * len(groups), 3.8 + 0.17 * lines), squeeze=False)
    for ax, (title, group) in zip(axes[0], sorted(groups.items()), strict=True):
        for e in group:
            per_iteration = e["train_env_steps"] / max(e["iterations"], 1)
            x = [row["iteration"] * per_iteration / 1e6 for row in e["curve"]]
            line = ax.plot(x, [row[key] for row in e["curve"]], label=f"{agent_label(e)} (train trials)")[0]
            ax.axhline(e["result"]["mean"], color=line.get_color(), linestyle=":",
                       label=f"{agent_label(e)} test {e['result']['mean']:.1f}")
        ref = group[0].get("baselines", {}).get(reference) if reference else None
        if ref:
            ax.axhline(ref["mean"], color="k", linestyle="--", label=f"{reference} {ref['mean']:.1f}")
        ax.set_title(title)
        ax.set_xlabel("env steps (millions)")
        ax.set_ylabel("total reward per trial")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_bandits.json``: one row per (agent, setting)."""
    heading = ["### RL² and MANN on bandits (total reward over n pulls, 1000 held-out bandits, mean "
               "± 95% CI; reduced runs)", "",
               f"`python benchmarks/rl2_bandits.py` ({machine_line(d)})", ""]
    lines = ["| n, k | agent | total reward | Gittins (same bandits) | agent − Gittins (paired) | greedy actions − "
             "Gittins | UCB1 (c = 0.2) | Thompson | paper RL² / Gittins | iterations, env steps | train time |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in sorted(d["entries"].values(), key=lambda e: (-e["n_pulls"], e["n_arms"], agent_label(e))):
        r, g, diff, b = e["result"], e["baselines"]["gittins"], e["minus_gittins"], e["baselines"]
        paper = e["paper"]
        paper_s = f"{paper['rl2']:.1f} / {paper['gittins']:.1f}" if paper else ""
        gd = e.get("greedy_minus_gittins")  # entries made before the greedy evaluation existed have none
        greedy_s = f"{gd['mean']:+.1f} ± {gd['ci95']:.1f}" if gd else "not run"
        lines.append(
            f"| {e['n_pulls']}, {e['n_arms']} | {agent_label(e)} | {r['mean']:.1f} ± {r['ci95']:.1f} | "
            f"{g['mean']:.1f} ± {g['ci95']:.1f} | {diff['mean']:+.1f} ± {diff['ci95']:.1f} | {greedy_s} | "
            f"{b['ucb1']['mean']:.1f} | {b['thompson']['mean']:.1f} | {paper_s} | "
            f"{e['iterations']}, {e['train_env_steps'] / 1e6:.1f}M | {e['train_wall_time_s'] / 60:.0f} min |")
    return "\n".join([*heading, *lines, *exploration_table(d)])


CLASSICAL_LABELS = {"gittins": "Gittins", "ucb1": "UCB1 (c = 0.2)", "thompson": "Thompson", "greedy": "greedy"}


def exploration_table(d: dict[str, Any]) -> list[str]:
    """How the agents and the classical strategies explored the same test bandits (entries that recorded it)."""
    entries = sorted((e for e in d["entries"].values() if "exploration" in e),
                     key=lambda e: (-e["n_pulls"], e["n_arms"], agent_label(e)))
    if not entries:
        return []
    lines = ["", "How they explored the same test bandits (mean ± 95% CI over bandits; `metarl.bandits."
             "exploration_profile`): distinct arms pulled in the first 10 pulls and in the whole trial, the share "
             "of the second half's pulls on the best arm, and the share of bandits whose second half mostly pulls "
             "an arm that is not the best.", "",
             "| n, k | strategy | arms tried, first 10 pulls | arms tried, whole trial | best arm, second half | "
             "mostly off the best arm |", "| --- | --- | --- | --- | --- | --- |"]
    settings = list(dict.fromkeys((e["n_pulls"], e["n_arms"]) for e in entries))
    for n, k in settings:
        group = [e for e in entries if (e["n_pulls"], e["n_arms"]) == (n, k)]
        rows = [(agent_label(e), e["exploration"][e["agent"]]) for e in group]
        # the classical strategies once per setting: every entry of it played them on the same bandits and rewards
        rows += [(label, group[0]["exploration"][name]) for name, label in CLASSICAL_LABELS.items()
                 if name in group[0]["exploration"]]
        lines += [f"| {n}, {k} | {label} | " + " | ".join(f"{m[key]['mean']:.2f} ± {m[key]['ci95']:.2f}" for key in
                                                        ("arms_tried_first", "arms_tried", "best_arm_late",
                                                         "off_best_late")) + " |" for label, m in rows]
    return lines


def entry_name(agent: str, config: dict[str, Any]) -> str:
    """The results-file name of an agent: ``rl2``, ``mann``, ``rl2_attention`` for RL² with the attention core,
    ``mann_lrua`` for MANN with least recently used access."""
    if config.get("core", "gru") != "gru":
        return f"{agent}_{config['core']}"
    return f"{agent}_{config['addressing']}" if config.get("addressing", "ntm") != "ntm" else agent


def agent_label(entry: dict[str, Any]) -> str:
    """The README's name of an entry's agent: ``RL2``, ``RL2 (attention)``, ``RL2 (separate value core)``,
    ``MANN (LRUA, 16 x 32 memory, 1 read head)``, ``MANN (GRU controller, ...)`` (the default LSTM is not named);
    ``..., PPO from clone.pt)`` for a run started from saved weights."""
    config = entry.get("config", {})
    notes = [config["core"]] if config.get("core", "gru") != "gru" else []
    notes += ["LRUA"] if config.get("addressing") == "lrua" else []
    if entry["agent"] == "mann":
        notes += ["GRU controller"] if config.get("controller", "lstm") == "gru" else []
        heads = config.get("read_heads", 1)
        notes.append(f"{config.get('memory_slots', 16)} x {config.get('memory_width', 16)} memory, {heads} read "
                     f"head{'s' if heads > 1 else ''}")
    notes += ["separate value core"] if config.get("value_core") == "separate" else []
    notes += [f"PPO from {Path(entry['init']).name}"] if entry.get("init") else []
    return entry["agent"].upper() + (f" ({', '.join(notes)})" if notes else "")


def merge_entry(path: Path, key: str, entry: dict[str, Any], setup: dict[str, Any], wall: float) -> dict[str, Any]:
    """Add ``entry`` under ``key`` to the results file (other entries are kept) and write it."""
    old = json.loads(path.read_text()) if path.exists() else {}
    entries = dict(old.get("entries", {}))
    loads = [row["load_1min"] for row in entry.get("curve", []) if "load_1min" in row]
    if loads:
        entry = {**entry, "load_average_1min": {"mean": float(np.mean(loads)), "max": float(np.max(loads)),
                                                "cpu_count": os.cpu_count()}}
    entries[key] = {**entry, "provenance": None}
    payload = {"benchmark": path.stem, "setup": setup, "entries": entries}
    write_results(path, payload, wall_time_s=wall)
    # Each entry keeps the provenance of the run that produced it (the file's is the last run's).
    final = json.loads(path.read_text())
    final["entries"][key]["provenance"] = final["provenance"]
    for k, v in old.get("entries", {}).items():
        if k != key:
            final["entries"][k]["provenance"] = v.get("provenance")
    path.write_text(json.dumps(final, indent=2) + "\n")
    return final


def memory_agent_parser(description: str, iterations: int, quick: str) -> argparse.ArgumentParser:
    """The options every RL²/MANN benchmark script shares (the script adds its setting's own)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--agent", choices=("rl2", "mann"), default="rl2")
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="agent config value (JSON)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", type=Path, default=None, help="results file (default: benchmarks/results/...)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="keep the training run in this folder (a checkpoint at every periodic check; "
                             "`metarl evaluate DIR` loads it) instead of a temporary one")
    add_entry_option(parser)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint (same options; --iterations "
                             "may grow, but the learning-rate and entropy schedules stay the run's); the entry then "
                             "counts every segment's training")
    return parser


def add_entry_option(parser: argparse.ArgumentParser) -> None:
    """``--entry KEY``: the results-file key of the run's entry instead of the one made from the agent and setting."""
    parser.add_argument("--entry", default=None,
                        help="the entry's key in the results file (default: from the agent, its memory and the "
                             "setting, e.g. mann_lrua_n10); name one to keep an entry of the same agent beside it")


def add_init_option(parser: argparse.ArgumentParser, cloner: str) -> None:
    """``--init FILE``: start PPO from saved weights (``cloner --save`` or a kept run's checkpoint)."""
    parser.add_argument("--init", type=Path, default=None,
                        help=f"start from the model weights in this file ({cloner} --save, or a kept run's "
                             "checkpoint.pt) instead of a fresh model; the optimizer and schedules start fresh")


def check_run_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--resume`` needs ``--run-dir``, and ``--init`` an existing file: say so before any work."""
    if args.resume and args.run_dir is None:
        parser.error("--resume continues a kept run: give its folder with --run-dir DIR")
    init = getattr(args, "init", None)
    if init is not None and not init.is_file():
        parser.error(f"--init {init}: no such file; give a weights file a cloning script's --save wrote or a kept "
                     "run's checkpoint.pt")


def resume_fields(run: TrainedRun) -> dict[str, Any]:
    """Entry fields that say a run was resumed (none for a run trained in one go)."""
    if run.resumed_from is None:
        return {}
    fields: dict[str, Any] = {
        "resumed_from_iteration": run.resumed_from,
        "resumed_note": "trained in segments; the wall time counts the earlier segments' iterations but not "
                        "their periodic checks"}
    if run.segments:  # runs started before segments.jsonl existed have none
        fields["segments"] = list(run.segments)
    return fields


def tiny(agent: str, meta_batch_size: int) -> dict[str, Any]:
    """The config of a --quick smoke run: a few trials through a very small memory."""
    size = {"hidden_size": 8} if agent == "rl2" else {"controller_size": 8, "memory_slots": 4}
    return {"meta_batch_size": meta_batch_size, **size}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = memory_agent_parser(__doc__.split("\n\n")[0], 300, "3 iterations, 50 test bandits, temporary output")
    parser.add_argument("--n", type=int, default=100, help="pulls per trial")
    parser.add_argument("--k", type=int, default=5, help="arms")
    add_init_option(parser, "rl2_bandit_imitation.py")
    args = parser.parse_args(argv)
    check_run_args(parser, args)
    torch.set_num_threads(1)
    overrides = _parse_env_kwargs(args.set)  # NAME=VALUE pairs, JSON values
    iterations, n_test = args.iterations, 1000
    out = args.out or RESULTS
    if args.quick:
        iterations, n_test = 3, 50
        overrides = {**tiny(args.agent, 8), **overrides}
        if args.out is None:
            out = Path(tempfile.mkdtemp()) / "rl2_bandits.json"
    t0 = time.perf_counter()
    entry = run_setting(args.agent, args.n, args.k, iterations, args.seed, n_test, overrides, args.run_dir,
                        args.resume, args.init)
    entry["quick"] = args.quick
    setup = {"source": "RL² (Duan et al. 2016) Table 1", "env": "metarl/Bandit-v0",
             "metric": "total reward of one trial of n pulls, mean ± 95% CI over test bandits",
             "reference": "benchmarks/bandit_baselines.py (same test bandits and reward stream)"}
    key = args.entry or f"{entry_name(args.agent, entry['config'])}_n{args.n}_k{args.k}"
    final = merge_entry(out, key, entry, setup, time.perf_counter() - t0)
    plot_training(final["entries"], out.with_suffix(".png"), "gittins", "rollout/return_mean",
                  "n={n_pulls}, k={n_arms}")
    print(readme_table(final))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return final


if __name__ == "__main__":
    main()
