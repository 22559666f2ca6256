"""The ``metarl`` command: train, evaluate, demo, envs, fewshot.

    metarl train pretrained --env metarl/Navigation2D-v0 --out runs/nav --iterations 60
    metarl evaluate runs/nav
    metarl demo                      # train + evaluate on Navigation2D in a few minutes, with a plot
    metarl envs                      # list the registered task families
    metarl fewshot protonet --dataset omniglot --data-dir DATA --ways 5 --shots 1 --out runs/proto

``python scripts/train.py ...`` and ``python scripts/evaluate.py ...`` are the same commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from metarl.checkpoint import CheckpointError
from metarl.config import (
    add_config_arguments,
    config_from_dict,
    config_to_dict,
    load_preset,
    overrides_from_args,
    suggest,
)
from metarl.fewshot import cmd_fewshot
from metarl.training import CHECKPOINT, TrainConfig, check_device, read_segments, train


def _algorithms() -> dict[str, tuple[type, type]]:
    from metarl.agents.maml_rl import MamlRLAgent, MamlRLConfig
    from metarl.agents.mann import MANNAgent, MANNConfig
    from metarl.agents.pretrained import PretrainedAgent, PretrainedConfig
    from metarl.agents.random_policy import RandomAgent, RandomConfig
    from metarl.agents.rl2 import RL2Agent, RL2Config

    return {"maml-rl": (MamlRLConfig, MamlRLAgent), "pretrained": (PretrainedConfig, PretrainedAgent),
            "random": (RandomConfig, RandomAgent), "rl2": (RL2Config, RL2Agent), "mann": (MANNConfig, MANNAgent)}


ALGORITHM_HELP = {
    "maml-rl": "MAML (Finn et al. 2017): policy-gradient inner loop, TRPO (or PPO) outer loop",
    "pretrained": "one policy trained across tasks (PPO), fine-tuned per task by policy gradient (MAML paper baseline)",
    "random": "uniform random actions (the floor of every curve)",
    "rl2": "RL² (Duan et al. 2016): a GRU policy whose memory persists across the episodes of a trial, trained "
           "with PPO over whole trials",
    "mann": "MANN (Santoro et al. 2016): a controller with an NTM-style external memory, cleared per trial, "
            "trained like rl2",
}


def build_learner(algo: str, env_spec: str, env_kwargs: dict[str, Any], algo_config: dict[str, Any],
                  seed: int, device: str, episodes_per_env: int = 1) -> tuple[Any, Any]:
    from metarl.rollout import TaskEnvs

    algorithms = _algorithms()
    if algo not in algorithms:
        raise ValueError(f"unknown algorithm {algo!r}{suggest(algo, algorithms)}; choose one of {sorted(algorithms)}")
    config_cls, learner_cls = algorithms[algo]
    config: Any = config_from_dict(config_cls, algo_config)
    envs = TaskEnvs(env_spec, env_kwargs, episodes_per_env=episodes_per_env)
    return learner_cls(envs, config, seed=seed, device=device), envs


def _parse_env_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--env-kwarg expects KEY=VALUE, got {item!r} (e.g. --env-kwarg oracle=true)")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def cmd_train(argv: Sequence[str]) -> int:
    algorithms = _algorithms()
    algo = argv[0] if argv and not argv[0].startswith("-") else None
    parser = argparse.ArgumentParser(
        prog="metarl train", description="Meta-train a learner on a task family.",
        epilog="algorithms: " + "; ".join(f"{k}: {v}" for k, v in ALGORITHM_HELP.items()))
    parser.add_argument("algo", help=f"one of {sorted(algorithms)}")
    parser.add_argument("--env", default="metarl/Navigation2D-v0",
                        help="registered id (metarl/Navigation2D-v0) or package.module:Name for a custom family")
    parser.add_argument("--env-kwarg", action="append", metavar="KEY=VALUE", help="keyword argument of the env")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, logs, TensorBoard)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    parser.add_argument("--config", help="JSON preset with algorithm options (flags override it)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--episodes-per-env", type=int, default=1, metavar="P",
                        help="maml-rl, pretrained: run up to P episodes of a task back to back on one sub-env "
                             "(default 1: one sub-env per episode); faster where episodes end early (CartPole), "
                             "the same kind of batch")
    add_config_arguments(parser, TrainConfig, "training loop")
    if algo in algorithms:
        add_config_arguments(parser, algorithms[algo][0], f"{algo} options")
    args = parser.parse_args(argv)
    if args.algo not in algorithms:
        raise ValueError(f"unknown algorithm {args.algo!r}{suggest(args.algo, algorithms)}; "
                         f"choose one of {sorted(algorithms)}")
    if args.episodes_per_env < 1:
        raise ValueError(f"--episodes-per-env must be >= 1, got {args.episodes_per_env}")
    if args.episodes_per_env > 1 and args.algo in ("rl2", "mann"):
        raise ValueError(f"--episodes-per-env {args.episodes_per_env} does nothing for {args.algo}: its trials already "
                         "run their episodes back to back on one sub-env; drop the flag")
    overrides = overrides_from_args(args)
    train_names = set(TrainConfig.__dataclass_fields__)
    train_cfg = config_from_dict(TrainConfig, {k: v for k, v in overrides.items() if k in train_names})
    algo_overrides = {k: v for k, v in overrides.items() if k not in train_names}
    out = Path(args.out)
    env_kwargs = _parse_env_kwargs(args.env_kwarg)
    if args.resume:
        saved = json.loads((out / "config.json").read_text()) if (out / "config.json").exists() else None
        if saved is None:
            raise FileNotFoundError(f"cannot resume: {out / 'config.json'} not found; start the run without --resume")
        if saved["algo"] != args.algo or saved["env"] != args.env:
            raise ValueError(f"--resume of a {saved['algo']!r} run on {saved['env']!r}, but the command says "
                             f"{args.algo!r} on {args.env!r}; repeat the original command plus --resume")
        algo_cfg_dict, env_kwargs = saved["algo_config"], saved["env_kwargs"]
        args.episodes_per_env = int(saved.get("episodes_per_env", 1))
        train_cfg = config_from_dict(TrainConfig, {**saved["train"], **{k: v for k, v in overrides.items()
                                                                       if k in ("iterations", "device")}})
    else:
        base = load_preset(algorithms[args.algo][0], args.config) if args.config else algorithms[args.algo][0]()
        algo_cfg_dict = config_to_dict(config_from_dict(algorithms[args.algo][0], algo_overrides, base=base))
    check_device(train_cfg.device)
    if not args.resume:
        # A user's task family is validated before any training starts (missing verbs, tasks that
        # change nothing, non-determinism, bad spaces), with the fix in the error message.
        from metarl.registry import make_env
        from metarl.tasks import check_task_family

        if env_kwargs:
            try:
                make_env(args.env, **env_kwargs).close()
            except TypeError as e:
                raise ValueError(f"--env-kwarg {env_kwargs}: {args.env} does not accept these arguments ({e}); "
                                 "see the env's docstring for its arguments") from None
        check_task_family(args.env if not env_kwargs else (lambda: make_env(args.env, **env_kwargs)))
    learner, envs = build_learner(args.algo, args.env, env_kwargs, algo_cfg_dict, train_cfg.seed, train_cfg.device,
                                  args.episodes_per_env)
    run_info = {"algo": args.algo, "algo_config": algo_cfg_dict, "env": args.env, "env_kwargs": env_kwargs,
                "episodes_per_env": args.episodes_per_env}
    t0 = time.perf_counter()
    metrics = train(learner, envs, out, train_cfg, run_info, resume=args.resume, progress=not args.no_progress)
    print(f"trained {args.algo} on {args.env} for {train_cfg.iterations} iterations in "
          f"{time.perf_counter() - t0:.1f} s; run folder: {out}")
    for k in ("rollout/return_mean", "meta/pre_adapt_return", "meta/post_adapt_return"):
        if k in metrics:
            print(f"  {k} = {metrics[k]:.3f}")
    envs.close()
    return 0


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """Rebuild a trained learner from a run folder (safe, weights-only checkpoint)."""
    from metarl.checkpoint import load_checkpoint

    run = Path(run_dir)
    path = run / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint in {run}: train first with `metarl train ALGO --out {run}`")
    state = load_checkpoint(path, map_location=device)
    info = state["run_info"]
    learner, envs = build_learner(info["algo"], info["env"], info["env_kwargs"], info["algo_config"],
                                  int(state["train"]["seed"]), device, int(info.get("episodes_per_env", 1)))
    learner.load_state_dict(state["learner"])
    return learner, envs, {**info, "iteration": int(state["iteration"]), "train": state["train"]}


def cmd_evaluate(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="metarl evaluate",
                                     description="Adaptation curve of a trained run on held-out tasks.")
    parser.add_argument("run", help="run folder written by `metarl train`")
    parser.add_argument("--tasks", type=int, default=40, help="held-out tasks (MAML paper: 40)")
    parser.add_argument("--budget", type=int, default=3, help="adaptation steps (curve has budget+1 points)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per task per adaptation step")
    parser.add_argument("--split", default="test", help="task split: test (held out) or ood")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the held-out tasks and env resets")
    parser.add_argument("--baselines", default="random,scratch",
                        help="comma list of baselines: random, scratch (fresh policy, same fine-tuning); '' for none")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", help="output folder (default: the run folder)")
    args = parser.parse_args(argv)
    return evaluate_run(args.run, args.tasks, args.budget, args.episodes, args.split, args.seed,
                        [b for b in args.baselines.split(",") if b], args.device, args.out)


def evaluate_run(run: str | Path, n_tasks: int, budget: int, episodes: int, split: str, seed: int,
                 baselines: Sequence[str], device: str = "cpu", out: str | Path | None = None) -> int:
    import numpy as np

    from metarl.evaluation import evaluate_adaptation, write_report
    from metarl.tasks import check_split

    check_split(split)
    if n_tasks < 1 or budget < 0 or episodes < 1:
        raise ValueError(f"need --tasks >= 1, --budget >= 0, --episodes >= 1; got {n_tasks}, {budget}, {episodes}")
    known = {"random", "scratch"}
    for b in baselines:
        if b not in known:
            raise ValueError(f"unknown baseline {b!r}{suggest(b, known)}; choose from {sorted(known)}")
    check_device(device)
    torch.set_num_threads(1)  # small networks: see TrainConfig.threads
    learner, envs, info = load_run(run, device)
    learners: dict[str, Any] = {info["algo"]: learner}
    if "random" in baselines and info["algo"] != "random":
        learners["random"], _ = build_learner("random", info["env"], info["env_kwargs"], {}, 0, device)
    if "scratch" in baselines and info["algo"] in ("pretrained", "maml-rl"):
        same = info["algo"] == "pretrained"
        config = info["algo_config"] if same else {}
        label = "scratch (untrained + same fine-tuning)" if same else "scratch (untrained + PG fine-tuning)"
        learners[label], _ = build_learner(
            "pretrained", info["env"], info["env_kwargs"], config, 10_000 + seed, device)
    tasks = envs.sample_tasks(n_tasks, np.random.default_rng(seed), split=split)
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    curves = evaluate_adaptation(learners, tasks, budget, episodes, seed)
    setup = {"run": str(run), "env": info["env"], "env_kwargs": info["env_kwargs"], "algo": info["algo"],
             "iteration": info["iteration"], "split": split, "tasks": n_tasks, "budget": budget,
             "episodes_per_step": episodes, "seed": seed, "wall_time_s": time.perf_counter() - t0,
             "training_segments": read_segments(run)}
    json_path, png_path, table = write_report(curves, out or run, setup,
                                              title=f"{info['algo']} on {info['env']} ({n_tasks} {split} tasks)")
    print(f"Adaptation on {n_tasks} held-out ({split}) tasks of {info['env']}: mean return ± 95% CI over tasks, "
          f"{episodes} episodes per task per step")
    print(table)
    print(f"wrote {json_path} and {png_path}")
    return 0


DEMO_ITERATIONS = {"maml-rl": 30, "pretrained": 80}
"""Meta-training iterations of ``metarl demo`` per learner: a few minutes on 2 CPU cores."""


def cmd_demo(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="metarl demo",
                                     description="Meta-train on Navigation2D, then evaluate adaptation on 40 "
                                                 "held-out goals next to a random policy and an untrained one.")
    parser.add_argument("--algo", default="maml-rl", choices=sorted(DEMO_ITERATIONS), help="learner to train")
    parser.add_argument("--out", default="runs/demo", help="run folder")
    parser.add_argument("--iterations", type=int, default=None,
                        help=f"meta-training iterations (default: {DEMO_ITERATIONS})")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    iterations = DEMO_ITERATIONS[args.algo] if args.iterations is None else args.iterations
    if (out / CHECKPOINT).exists():
        print(f"{out} already holds a trained demo run; evaluating it (delete the folder to retrain)")
    else:
        cmd_train([args.algo, "--env", "metarl/Navigation2D-v0", "--out", str(out), "--iterations", str(iterations),
                   "--eval-every", "10", *(["--no-progress"] if args.no_progress else [])])
    return evaluate_run(out, n_tasks=40, budget=3, episodes=20, split="test", seed=12345,
                        baselines=["random", "scratch"])


def cmd_envs(argv: Sequence[str]) -> int:
    import metarl.envs

    for env_id, (entry, _) in metarl.envs.ENV_IDS.items():
        print(f"{env_id:32s} {entry}")
    return 0


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "demo": cmd_demo, "envs": cmd_envs, "fewshot": cmd_fewshot}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    cmd = argv[0]
    if cmd not in COMMANDS:
        print(f"metarl: unknown command {cmd!r}{suggest(cmd, COMMANDS)}; commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    try:
        return COMMANDS[cmd](argv[1:])
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, CheckpointError) as e:
        if "METARL_DEBUG" in __import__("os").environ:
            raise
        print(f"metarl {cmd}: error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # the training loop stopped a diverging run; its checkpoint is kept
        print(f"metarl {cmd}: stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
