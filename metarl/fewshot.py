"""The ``metarl fewshot`` command: meta-train a supervised few-shot learner through the shared training
loop (progress bar, CSV + TensorBoard, atomic checkpoints, ``--resume``, Ctrl-C), then evaluate it on
held-out classes (or tasks) and report the accuracy (or MSE) with a 95% confidence interval and the
protocol it was measured under::

    metarl fewshot protonet --dataset omniglot --data-dir DATA --ways 5 --shots 1 --train-ways 60 \\
        --train-queries 5 --iterations 5000 --out runs/proto-5w1s
    metarl fewshot maml --dataset sinusoid --shots 5 --meta-batch-size 25 --inner-lr 0.01 --eval-steps 1 \\
        --iterations 70000 --out runs/maml-sine5
    metarl fewshot maml --help          # every option of the data, the test, the loop and the learner

Learners: ``protonet``, ``maml``, ``fomaml`` (MAML with ``--first-order true``), ``anil`` (MAML with
``--anil true``), ``reptile``, ``metasgd``, ``lstm-opt``. ``python scripts/fewshot.py ...`` is the same
command.

The run folder holds what ``metarl train`` writes (``config.json``, ``progress.csv``, TensorBoard
events, ``checkpoint.pt``) plus ``fewshot_evaluation.json`` (per-episode values, mean, CI, protocol,
machine, commit) and ``fewshot_evaluation.png``. From Python, :func:`load_fewshot_run` rebuilds the
trained learner: ``learner.adapt(episode).classify(x)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from metarl.config import (
    add_config_arguments,
    config_from_dict,
    config_to_dict,
    load_preset,
    option,
    overrides_from_args,
    require,
    require_at_least,
    require_choice,
    suggest,
)
from metarl.provenance import write_results  # imported with the command: records the commit of the code that runs
from metarl.stats import MeanCI, mean_ci95
from metarl.supervised import Problem, has_batch_statistics
from metarl.training import CHECKPOINT, TrainConfig, check_device, read_segments, train

DATASETS = ("omniglot", "sinusoid")
EVALUATION = "fewshot_evaluation"

LEARNER_HELP = {
    "protonet": "Prototypical Networks (Snell et al. 2017): nearest class mean in a learned embedding",
    "maml": "MAML (Finn et al. 2017): second-order meta-gradient through inner SGD steps",
    "fomaml": "first-order MAML (the inner gradients as constants)",
    "anil": "ANIL (Raghu et al. 2020): MAML adapting only the head",
    "reptile": "Reptile (Nichol et al. 2018): move the initialisation towards task-adapted weights",
    "metasgd": "Meta-SGD (Li et al. 2017): MAML with a learned step size per parameter",
    "lstm-opt": "coordinate-wise LSTM optimizer (Andrychowicz et al. 2016; --variant ravi: Ravi & Larochelle 2017)",
}


def learners() -> dict[str, tuple[type, type, dict[str, Any]]]:
    """``name -> (config class, learner class, config overrides)``."""
    from metarl.agents.learned_optimizer import (
        LSTMOptimizerConfig,
        LSTMOptimizerLearner,
        MetaSGDConfig,
        MetaSGDLearner,
    )
    from metarl.agents.maml import MamlConfig, MamlLearner
    from metarl.agents.protonet import ProtoNetConfig, ProtoNetLearner
    from metarl.agents.reptile import ReptileConfig, ReptileLearner

    return {"protonet": (ProtoNetConfig, ProtoNetLearner, {}), "maml": (MamlConfig, MamlLearner, {}),
            "fomaml": (MamlConfig, MamlLearner, {"first_order": True}),
            "anil": (MamlConfig, MamlLearner, {"anil": True}),
            "reptile": (ReptileConfig, ReptileLearner, {}), "metasgd": (MetaSGDConfig, MetaSGDLearner, {}),
            "lstm-opt": (LSTMOptimizerConfig, LSTMOptimizerLearner, {})}


def check_learner_name(name: str) -> None:
    if name not in LEARNER_HELP:
        raise ValueError(f"unknown few-shot learner {name!r}{suggest(name, LEARNER_HELP)}; choose one of "
                         f"{', '.join(LEARNER_HELP)}")


# ------------------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class FewShotDataConfig:
    dataset: str = option("omniglot", "omniglot (classification) or sinusoid (regression, MAML's definition)")
    data_dir: str = option("", "omniglot: folder holding images_background.zip and images_evaluation.zip (or "
                               "their extracted folders)")
    sources: tuple[str, ...] = option(("images_background", "images_evaluation"),
                                      "omniglot files to read (images_background_small1 ...: the small subsets)")
    download: bool = option(False, "omniglot: download the missing official zips into --data-dir first (MD5 "
                                   "checked)")
    cache_dir: str = option("", "folder of the decoded-image cache ('': $METARL_CACHE, else ~/.cache/metarl)")
    split: str = option("vinyals", "omniglot class split: vinyals (1028/172/423 characters, x4 rotations) or "
                                   "random (seeded, same proportions)")
    split_seed: int = option(0, "seed of --split random")
    ways: int = option(5, "classes per test episode (N)")
    shots: int = option(1, "support examples per class (K); sinusoid: support points")
    queries: int = option(0, "query examples per class at test; sinusoid: query points (0: 15 omniglot, 100 "
                             "sinusoid)")
    train_ways: int = option(0, "classes per training episode (0: --ways; ProtoNet's paper: 60)")
    train_shots: int = option(0, "support examples per class in training (0: --shots; Reptile's paper: 10)")
    train_queries: int = option(-1, "queries per class in training (-1: --queries for omniglot, K for sinusoid "
                                    "as MAML's code; 0 allowed for reptile)")

    def __post_init__(self) -> None:
        require(self.dataset in DATASETS,
                f"unknown dataset {self.dataset!r}{suggest(self.dataset, DATASETS)}; choose one of {DATASETS}")
        require_choice(self, "split", ("vinyals", "random"))
        require_at_least(self, 1, "ways", "shots")
        require(self.queries >= 0, f"queries must be >= 0 (0: the data set's default), got {self.queries}")
        require(self.train_ways >= 0 and self.train_shots >= 0,
                f"train_ways and train_shots must be >= 0 (0: same as at test), got {self.train_ways}, "
                f"{self.train_shots}")
        require(self.train_queries >= -1, f"train_queries must be >= -1 (-1: default), got {self.train_queries}")
        require(self.dataset != "omniglot" or bool(self.data_dir),
                "--dataset omniglot needs --data-dir: the folder holding images_background.zip and "
                "images_evaluation.zip (https://github.com/brendenlake/omniglot/tree/master/python); add "
                "--download to fetch them there")

    @property
    def test_queries(self) -> int:
        return self.queries or (15 if self.dataset == "omniglot" else 100)

    @property
    def effective_train_queries(self) -> int:
        if self.train_queries >= 0:
            return self.train_queries
        return self.test_queries if self.dataset == "omniglot" else (self.train_shots or self.shots)

    def problem(self) -> Problem:
        if self.dataset == "sinusoid":
            return Problem("regression", (1,), 1)
        return Problem("classification", (1, 28, 28), self.ways)


@dataclass(frozen=True)
class FewShotTestConfig:
    test_episodes: int = option(600, "held-out test episodes of the final evaluation (papers: >= 600; ProtoNet 1000)")
    test_budget: int = option(-1, "adaptation steps at test (-1: the learner's eval_steps; 0 for protonet)")
    test_seed: int = option(12345, "seed of the test episodes")
    no_test: bool = option(False, "skip the final evaluation")

    def __post_init__(self) -> None:
        require_at_least(self, 1, "test_episodes")
        require(self.test_budget >= -1, f"test_budget must be >= -1 (-1: the learner's eval_steps), got "
                                        f"{self.test_budget}")


def learner_budget(learner: Any, requested: int = -1) -> int:
    """Adaptation steps at test: ``requested`` if >= 0, else the learner's ``eval_steps`` (0 without one)."""
    return requested if requested >= 0 else int(getattr(learner.config, "eval_steps", 0))


# ------------------------------------------------------------------------------------------------------
# data


def _cache(data: FewShotDataConfig) -> str | None:
    return data.cache_dir or "default"


def check_data(data: FewShotDataConfig, head_learner: bool) -> dict[str, int]:
    """Everything about the data request that can fail, checked before any decoding or training.

    Returns the number of classes of each split (empty for sinusoid).
    """
    train_ways = data.train_ways or data.ways
    if head_learner and data.dataset == "omniglot" and train_ways != data.ways:
        raise ValueError(f"this learner's classifier head has one output per way: --train-ways ({train_ways}) must "
                         f"equal --ways ({data.ways}); only protonet trains with more ways than it tests")
    if data.dataset == "sinusoid":
        return {}
    from metarl.data.omniglot import DRAWINGS, download_omniglot, omniglot_characters, random_split, vinyals_split

    if data.download:
        download_omniglot(data.data_dir, data.sources)
    chars = omniglot_characters(data.data_dir, data.sources)
    by_char = vinyals_split(chars) if data.split == "vinyals" else random_split(chars, data.split_seed)
    counts = {k: 4 * len(v) for k, v in by_char.items()}
    for split, n in counts.items():
        ways = train_ways if split == "train" else data.ways
        if ways > n:
            hint = " (the small subsets hold no Vinyals test characters: use --split random)" \
                if data.split == "vinyals" and n == 0 else ""
            raise ValueError(f"--{'train-' if split == 'train' else ''}ways {ways} > the {n} classes of the {split} "
                             f"split of omniglot ({data.split}){hint}; choose at most {n}")
    train_shots = data.train_shots or data.shots
    for what, k, q in (("test", data.shots, data.test_queries), ("train", train_shots, data.effective_train_queries)):
        if k + q > DRAWINGS:
            raise ValueError(f"{what} episodes need shots + queries = {k} + {q} = {k + q} images per class, but "
                             f"omniglot has {DRAWINGS} per class; lower --{'train-' if what == 'train' else ''}shots "
                             f"or --{'train-' if what == 'train' else ''}queries")
    return counts


def build_source(data: FewShotDataConfig, device: torch.device | str = "cpu") -> Any:
    """The episode source of the request (decodes Omniglot, or reads its cache)."""
    from metarl.data.episodes import EpisodeShape, EpisodeSource
    from metarl.data.sinusoid import SinusoidTasks

    if data.dataset == "sinusoid":
        return SinusoidTasks(data.shots, data.test_queries, data.train_shots or None, data.effective_train_queries,
                             device)
    from metarl.data.omniglot import load_omniglot

    omniglot = load_omniglot(data.data_dir, data.sources, _cache(data))
    return EpisodeSource(omniglot, omniglot.split(data.split, data.split_seed),
                         EpisodeShape(data.train_ways or data.ways, data.train_shots or data.shots,
                                      data.effective_train_queries),
                         EpisodeShape(data.ways, data.shots, data.test_queries), name="omniglot", device=device)


# ------------------------------------------------------------------------------------------------------
# evaluation


_BN_WORDS = {"running": ("running averages from training (non-transductive)", False),
             "per-query": ("support set + one query (non-transductive)", False),
             "transductive": ("query-batch statistics (transductive)", True)}


def batch_norm_policy(learner: Any) -> tuple[str, bool]:
    """How the learner normalises test queries, and whether that is transductive (reported with every number)."""
    net = getattr(learner, "net", None)
    if net is not None and not has_batch_statistics(net):
        return "none (no BatchNorm)", False
    return _BN_WORDS[str(getattr(learner.config, "batch_norm", "transductive"))]


@dataclass(frozen=True)
class FewShotEvaluation:
    """Per-episode query metric after each adaptation stage, ``[n_episodes, n_stages]``, with the protocol."""

    learner: str
    metric: str
    per_episode: np.ndarray
    protocol: dict[str, Any]

    @property
    def stats(self) -> list[MeanCI]:
        """Mean ± 95% CI per stage; a stage where adaptation diverged on some episode (a non-finite MSE) is
        reported as an infinite mean rather than averaged over the episodes that survived."""
        out = []
        for k in range(self.per_episode.shape[1]):
            v = self.per_episode[:, k]
            out.append(mean_ci95(v) if np.isfinite(v).all() else MeanCI(math.inf, math.nan, len(v), math.nan))
        return out

    @property
    def diverged(self) -> list[int]:
        """Episodes with a non-finite query metric, per stage."""
        return (~np.isfinite(self.per_episode)).sum(0).tolist()

    @property
    def final(self) -> MeanCI:
        return self.stats[-1]

    def summary(self) -> str:
        f, p = self.final, self.protocol
        unit = "%" if self.metric == "accuracy" else ""
        shape = (f"{p['ways']}-way {p['shots']}-shot, {p['queries']} queries per class"
                 if self.metric == "accuracy" else f"{p['shots']}-shot, {p['queries']} query points")
        return (f"{self.learner} test {self.metric}: {f.mean:.2f}{unit} ± {f.ci95:.2f} (95% CI over {f.n} "
                f"held-out episodes; {shape}; {p['adaptation_steps']} adaptation steps; split {p['split']}; "
                f"BatchNorm: {p['batch_norm']})")

    def table(self) -> str:
        from metarl.evaluation import Curve, format_table

        return format_table({self.learner: Curve(self.learner, self.per_episode)})

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {"learner": self.learner, "metric": self.metric, "protocol": self.protocol,
                "final": s[-1].to_dict(), "stages": [x.to_dict() for x in s], "diverged_episodes": self.diverged,
                "per_episode": self.per_episode.tolist()}


def evaluate_fewshot(learner: Any, source: Any, name: str, episodes: int, budget: int, seed: int,
                     split: str = "test", chunk: int = 50, protocol: dict[str, Any] | None = None) -> FewShotEvaluation:
    """Adapt ``learner`` to ``episodes`` held-out episodes of ``split`` (seeded) and collect its curve."""
    rng = np.random.default_rng([seed, 7])
    torch.manual_seed(seed)
    rows, metric = [], "accuracy"
    for start in range(0, episodes, chunk):
        tasks = source.sample_tasks(min(chunk, episodes - start), rng, split=split)
        result = learner.adapt_many(tasks, budget, seed=seed + start, keep_adapted=False)
        rows.append(np.asarray(result.stage_values, dtype=np.float64))
        metric = result.metric
    bn, transductive = batch_norm_policy(learner)
    return FewShotEvaluation(name, metric, np.concatenate(rows), {
        **(protocol or {}), "split_evaluated": split, "episodes": episodes, "adaptation_steps": budget,
        "batch_norm": bn, "transductive": transductive, "test_seed": seed})


def plot_evaluation(evaluation: FewShotEvaluation, path: Path) -> Path:
    """Mean ± 95% CI of the query metric after each adaptation step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = evaluation.stats
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.errorbar(np.arange(len(s)), [x.mean for x in s], yerr=[0.0 if math.isnan(x.ci95) else x.ci95 for x in s],
                marker="o", capsize=3, label=evaluation.learner)
    ax.set_xlabel("adaptation steps on the support set")
    ax.set_ylabel(("accuracy (%)" if evaluation.metric == "accuracy" else "MSE") + ", 95% CI over episodes")
    ax.set_title(evaluation.protocol.get("title", evaluation.learner), fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_evaluation(evaluation: FewShotEvaluation, out_dir: Path, wall_time_s: float) -> tuple[Path, Path]:
    json_path = write_results(out_dir / f"{EVALUATION}.json", evaluation.to_dict(), wall_time_s)
    return json_path, plot_evaluation(evaluation, out_dir / f"{EVALUATION}.png")


def data_protocol(data: FewShotDataConfig, counts: dict[str, int]) -> dict[str, Any]:
    """The data side of a result's protocol: data set, split rule, episode shapes, classes per split."""
    if data.dataset == "sinusoid":
        return {"dataset": "sinusoid", "split": "task-value hash (20% test)", "ways": 0, "shots": data.shots,
                "queries": data.test_queries, "train_shots": data.train_shots or data.shots,
                "train_queries": data.effective_train_queries}
    return {"dataset": "omniglot", "sources": list(data.sources),
            "split": data.split + ("" if data.split == "vinyals" else f" (seed {data.split_seed})"),
            "classes_per_split": counts, "ways": data.ways, "shots": data.shots, "queries": data.test_queries,
            "train_ways": data.train_ways or data.ways, "train_shots": data.train_shots or data.shots,
            "train_queries": data.effective_train_queries}


# ------------------------------------------------------------------------------------------------------
# building and loading runs


def build_learner(name: str, config: dict[str, Any], data: FewShotDataConfig, seed: int, device: str) -> Any:
    check_learner_name(name)
    config_cls, learner_cls, _ = learners()[name]
    return learner_cls(config_from_dict(config_cls, config), data.problem(), seed=seed, device=device)


@dataclass
class FewShotRun:
    """A trained run rebuilt from its folder: ``learner.adapt(episode)`` predicts."""

    learner: Any
    name: str
    data: FewShotDataConfig
    iteration: int
    info: dict[str, Any]


def load_fewshot_run(run_dir: str | Path, device: str = "cpu", data_dir: str | None = None) -> FewShotRun:
    """Rebuild the learner of a ``metarl fewshot`` run folder (weights-only checkpoint)."""
    from metarl.checkpoint import load_checkpoint

    run = Path(run_dir)
    if not (run / CHECKPOINT).exists():
        raise FileNotFoundError(f"no checkpoint in {run}: train first with `metarl fewshot LEARNER --out {run}`")
    state = load_checkpoint(run / CHECKPOINT, map_location=device)
    info = state["run_info"]
    if info.get("command") != "fewshot":
        raise ValueError(f"{run} is not a `metarl fewshot` run (use `metarl evaluate {run}` for RL runs)")
    data = config_from_dict(FewShotDataConfig, {**info["data"], **({"data_dir": data_dir} if data_dir else {})})
    learner = build_learner(info["algo"], info["algo_config"], data, int(state["train"]["seed"]), device)
    learner.load_state_dict(state["learner"])
    return FewShotRun(learner, info["algo"], data, int(state["iteration"]), info)


# ------------------------------------------------------------------------------------------------------
# the command


def _parser(name: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metarl fewshot", description="Meta-train a few-shot learner, then evaluate it on held-out classes.",
        epilog="learners: " + "; ".join(f"{k}: {v}" for k, v in LEARNER_HELP.items()))
    parser.add_argument("learner", help=f"one of {', '.join(LEARNER_HELP)}")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, TensorBoard, evaluation)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--config", help="JSON preset of learner options (flags override it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_arguments(parser, FewShotDataConfig, "data and episodes")
    add_config_arguments(parser, FewShotTestConfig, "final evaluation")
    add_config_arguments(parser, TrainConfig, "training loop")
    if name in LEARNER_HELP:
        add_config_arguments(parser, learners()[name][0], f"{name} options")
    return parser


def _split(overrides: dict[str, Any], cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in overrides.items() if k in names}


def cmd_fewshot(argv: Sequence[str]) -> int:
    name = argv[0] if argv and not argv[0].startswith("-") else None
    if name is not None:
        check_learner_name(name)
    args = _parser(name).parse_args(argv)
    name = args.learner
    overrides = overrides_from_args(args)
    out = Path(args.out)
    config_cls, _, preset = learners()[name]
    if args.resume:
        saved_path = out / "config.json"
        if not saved_path.exists():
            raise FileNotFoundError(f"cannot resume: {saved_path} not found; start the run without --resume")
        saved = json.loads(saved_path.read_text())
        if saved.get("algo") != name:
            raise ValueError(f"--resume of a {saved.get('algo')!r} run, but the command says {name!r}; repeat the "
                             "original command plus --resume")
        data = config_from_dict(FewShotDataConfig, saved["data"])
        test = config_from_dict(FewShotTestConfig, {**saved["test"], **_split(overrides, FewShotTestConfig)})
        train_cfg = config_from_dict(TrainConfig, {**saved["train"], **{k: v for k, v in overrides.items()
                                                                       if k in ("iterations", "device")}})
        algo_cfg = saved["algo_config"]
    else:
        data = config_from_dict(FewShotDataConfig, _split(overrides, FewShotDataConfig))
        test = config_from_dict(FewShotTestConfig, _split(overrides, FewShotTestConfig))
        train_cfg = config_from_dict(TrainConfig, _split(overrides, TrainConfig))
        learner_over = {k: v for k, v in overrides.items()
                        if k not in {f.name for cls in (FewShotDataConfig, FewShotTestConfig, TrainConfig)
                                     for f in dataclasses.fields(cls)}}
        base = load_preset(config_cls, args.config) if args.config else config_cls()
        base = config_from_dict(config_cls, preset, base=base)
        algo = config_from_dict(config_cls, learner_over, base=base)
        if getattr(algo, "meta_iterations", None) == 0:  # Reptile: anneal over the whole run
            algo = dataclasses.replace(algo, meta_iterations=train_cfg.iterations)
        algo_cfg = config_to_dict(algo)
        if "eval_budget" not in overrides:  # the loop's held-out check adapts as the final test does
            train_cfg = dataclasses.replace(train_cfg, eval_budget=int(algo_cfg.get("eval_steps", 0)))
    check_device(train_cfg.device)
    counts = check_data(data, head_learner=name != "protonet")
    learner = build_learner(name, algo_cfg, data, train_cfg.seed, train_cfg.device)
    source = build_source(data, train_cfg.device)
    run_info = {"command": "fewshot", "algo": name, "algo_config": algo_cfg, "data": config_to_dict(data),
                "test": config_to_dict(test)}
    t0 = time.perf_counter()
    metrics = train(learner, source, out, train_cfg, run_info, resume=args.resume, progress=not args.no_progress)
    train_s = time.perf_counter() - t0
    print(f"trained {name} on {data.dataset} for {train_cfg.iterations} iterations in {train_s:.1f} s; run folder: "
          f"{out}")
    for k, v in metrics.items():
        if k.startswith(("meta/post_adapt_", "train/query_")):
            print(f"  {k} = {v:.4g}")
    if test.no_test:
        return 0
    budget = learner_budget(learner, test.test_budget)
    t1 = time.perf_counter()
    protocol = {**data_protocol(data, counts), "train_iterations": train_cfg.iterations,
                "meta_batch_size": algo_cfg.get("meta_batch_size"), "learner_config": algo_cfg,
                "training_segments": read_segments(out)}
    evaluation = evaluate_fewshot(learner, source, name, test.test_episodes, budget, test.test_seed,
                                  protocol=protocol)
    json_path, png_path = write_evaluation(evaluation, out, time.perf_counter() - t1)
    print(evaluation.table())
    print(evaluation.summary())
    print(f"wrote {json_path} and {png_path}")
    return 0


__all__ = ["DATASETS", "FewShotDataConfig", "FewShotEvaluation", "FewShotRun", "FewShotTestConfig", "build_learner",
           "build_source", "check_data", "cmd_fewshot", "evaluate_fewshot", "learner_budget", "learners",
           "load_fewshot_run", "write_evaluation"]
