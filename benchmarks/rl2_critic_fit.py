"""How well can a critic predict a trained memory policy's returns, with and without the task's parameters?

RL²'s value function sees what the policy sees: the memory's output ``h_t`` (of the policy's core, or of a
separate value core) and the time in the trial. Its error is the noise of the advantages PPO learns from.
A *task-informed* critic (``task_informed_value``, :class:`metarl.recurrent.RecurrentActorCritic`) also
reads the task's parameters ``z`` (a bandit's arm probabilities), known in training only.

This script measures the room for that, offline, on a kept training run (``rl2_bandits.py --run-dir DIR``):

1. The trained policy plays ``--trials`` trials on train-split tasks (sampled actions, as in training).
2. Targets: the discounted returns-to-go ``G_t = sum_k gamma^k r_{t+k}`` of the trial (the quantity the
   value head estimates, before GAE's bootstrapping), ``gamma`` the run's.
3. Critics are fitted on 3/4 of the trials and scored on the rest (mean squared error per step, 95% CI
   over test trials): the run's own value head; least squares on ``[h, t]`` and ``[h, t, z]``; MLPs (two tanh
   layers of 128, Adam, inputs standardised) on ``[h, t]``, ``[h, t, z]`` and ``[t, z]``. ``h`` is what the
   run's value head reads (the separate value core's output, or the policy's core's).

The error of a critic that knew ``z`` and the memory exactly would still include the Bernoulli noise of the
rewards to come; the differences between rows are what the inputs add.

Run: ``python benchmarks/rl2_critic_fit.py DIR`` (about 2 minutes on one core) or ``--quick``.
Results: ``benchmarks/results/rl2_critic_fit.json``, one entry per run folder name.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_common import machine_line  # noqa: E402
from rl2_bandits import merge_entry  # noqa: E402

from metarl.cli import load_run  # noqa: E402
from metarl.returns import discounted_returns  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_critic_fit.json"


def fit_and_score(x: torch.Tensor, g: torch.Tensor, train: slice, test: slice, hidden: int, steps: int,
                  seed: int = 0) -> torch.Tensor:
    """Fit ``G ~ f(x)`` on the ``train`` columns of ``x [T, B, D]``, ``g [T, B]``; the test columns' squared errors
    ``[T, B_test]``. ``hidden == 0``: least squares (exact); else an MLP trained with Adam."""
    d = x.shape[-1]
    x_tr, y_tr = x[:, train].reshape(-1, d).double(), g[:, train].reshape(-1).double()
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_te = ((x[:, test].double() - mu) / sd)
    x_tr = (x_tr - mu) / sd
    if hidden == 0:
        a = torch.cat([x_tr, torch.ones(len(x_tr), 1, dtype=x_tr.dtype)], 1)
        w = torch.linalg.lstsq(a, y_tr[:, None]).solution
        pred = torch.cat([x_te, torch.ones(*x_te.shape[:-1], 1, dtype=x_te.dtype)], -1) @ w
        return (pred[..., 0].float() - g[:, test]) ** 2
    torch.manual_seed(seed)
    last = torch.nn.Linear(hidden, 1)
    with torch.no_grad():
        last.bias.fill_(float(y_tr.mean()))
    net = torch.nn.Sequential(torch.nn.Linear(d, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, hidden),
                              torch.nn.Tanh(), last).double()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=steps)
    for _ in range(steps):
        idx = torch.randint(0, len(x_tr), (4096,))
        loss = ((net(x_tr[idx])[:, 0] - y_tr[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        return (net(x_te)[..., 0].float() - g[:, test]) ** 2


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a kept RL²/MANN training run (e.g. rl2_bandits.py --run-dir)")
    parser.add_argument("--trials", type=int, default=1024, help="trials played (3/4 fit, 1/4 scored)")
    parser.add_argument("--steps", type=int, default=2000, help="Adam steps per MLP fit")
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--quick", action="store_true", help="64 trials, 50 steps, temporary output")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.trials < 8:
        parser.error(f"--trials must be >= 8 (3/4 fit, 1/4 scored), got {args.trials}")
    if args.steps < 1:
        parser.error(f"--steps must be >= 1, got {args.steps}")
    trials, steps = (64, 50) if args.quick else (args.trials, args.steps)
    out = args.out or (Path(tempfile.mkdtemp()) / "rl2_critic_fit.json" if args.quick else RESULTS)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    learner, envs, info = load_run(args.run_dir)
    model = learner.model
    tasks = envs.sample_tasks(trials, np.random.default_rng(args.seed))
    batch = learner.collect(tasks, 1, learner.config.episodes_per_trial, seed=args.seed)
    t, b = batch.rewards.shape
    with torch.no_grad():
        out_pi, out_v, _ = model.run_cores("unroll", batch.inputs, batch.initial_states[0])
    h = out_v if out_v is not None else out_pi
    gamma = learner.config.gamma
    g = discounted_returns(batch.rewards, batch.trial_end.float(), gamma) * batch.mask
    time_in = (torch.arange(t, dtype=torch.float32) / t)[:, None, None].expand(t, b, 1)
    z = torch.tensor([task.features() for task in tasks], dtype=torch.float32)[None].expand(t, b, -1)
    n_fit = (3 * b) // 4
    train, test = slice(0, n_fit), slice(n_fit, b)
    mask = batch.mask[:, test]

    def per_trial(sq: torch.Tensor) -> dict[str, float | int]:
        return mean_ci95(((sq * mask).sum(0) / mask.sum(0)).numpy()).to_dict()

    rows: dict[str, dict[str, float | int]] = {
        "returns' variance (a constant critic)": per_trial((g[:, test] - g[:, train][batch.mask[:, train] > 0].mean())
                                                            ** 2),
        "the run's value head": per_trial((batch.values[:, test] - g[:, test]) ** 2),
    }
    critics = (("least squares [h, t]", (h, time_in), 0), ("least squares [h, t, z]", (h, time_in, z), 0),
               ("MLP [h, t]", (h, time_in), 128), ("MLP [h, t, z]", (h, time_in, z), 128),
               ("MLP [t, z]", (time_in, z), 128))
    for name, parts, hidden in critics:
        rows[name] = per_trial(fit_and_score(torch.cat(parts, -1), g, train, test, hidden, steps))
        print(f"{name:40s} {rows[name]['mean']:8.2f} ± {rows[name]['ci95']:.2f}", flush=True)
    entry = {"run_dir_name": args.run_dir.name, "algo": info["algo"], "env": info["env"],
             "env_kwargs": info["env_kwargs"], "run_iteration": info["iteration"],
             "value_core": info["algo_config"].get("value_core", "shared"),
             "task_informed_value": bool(info["algo_config"].get("task_informed_value", False)),
             "trials": trials, "fit_trials": n_fit, "mlp_steps": steps, "gamma": gamma,
             "squared_error_per_step": rows, "quick": bool(args.quick),
             "command": None if args.quick else "python benchmarks/rl2_critic_fit.py " + " ".join(argv or sys.argv[1:])}
    setup = {"targets": "discounted returns-to-go of the trained policy's own trials (train split)",
             "inputs": "h: what the run's value head reads; t: step / trial length; z: Task.features()"}
    final = merge_entry(out, args.run_dir.name, entry, setup, time.perf_counter() - t0)
    print(readme_table(final))
    print(f"wrote {out}")
    return final


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_critic_fit.json``: one column per kept run."""
    entries = d["entries"]
    names = list(entries)
    first = entries[names[0]]["squared_error_per_step"]
    head = ["| critic (squared error per step, held-out trials) | " + " | ".join(
        f"{entries[n]['algo']} {', '.join(f'{k}={v}' for k, v in entries[n]['env_kwargs'].items())} "
        f"({entries[n]['value_core']} value core"
        f"{', task-informed' if entries[n]['task_informed_value'] else ''}, update {entries[n]['run_iteration']})"
        for n in names) + " |", "|---|" + "---|" * len(names)]
    def cell(r: dict[str, Any]) -> str:
        return f"{r['mean']:.1f} ± {r['ci95']:.1f}"

    body = [f"| {row} | " + " | ".join(cell(entries[n]["squared_error_per_step"][row]) for n in names) + " |"
            for row in first]
    title = "### How well RL²'s critic can fit the policy's returns, with and without the task (kept runs)"
    return "\n".join([title, "",
                      f"`python benchmarks/rl2_critic_fit.py RUN_DIR` ({machine_line(d)})", "", *head, *body])


if __name__ == "__main__":
    main()
