"""Can RL²'s GRU play bandits as well as the Gittins index? Behaviour cloning of Gittins play into it.

RL² meta-trained with PPO stays below the Gittins index on the RL² bandits (``benchmarks/rl2_bandits.py``:
77.6 against 79.0 at n = 100, k = 5; 83.0 against 84.6 at k = 10), and it explores less (fewer arms tried,
more bandits whose second half stays off the best arm). This script separates what the policy class can hold
from what PPO finds, as ``rl2_tabular_imitation.py`` does for the tabular MDPs:

1. An exact expert in RL²'s own input format, :class:`GittinsExpert`: a :class:`metarl.trials.MemoryModel`
   whose state is every arm's successes and failures in the trial so far; from the memory inputs
   ``x_t = [s_t, a_{t-1}, r_{t-1}, d_{t-1}]`` it counts the previous pull and takes an arm of largest Gittins
   index (the table of :class:`metarl.bandits.Gittins`: Beta(1, 1) prior, discount ``1 - 1/n``; ties uniformly
   at random), the strategy the Gittins column of ``rl2_bandits.py`` plays.
2. Its trials on *train* bandits, collected by :func:`metarl.trials.collect_trials` (the rollout RL² trains on),
   give inputs and expert arms; an RL² agent of the bandit headline's size (GRU 128) is trained by
   cross-entropy on them (its value head is not used), fresh trials every update.
3. The cloned policy plays one trial on each of the 1000 *test* bandits of ``rl2_bandits.py`` with the same
   reward draws as the classical strategies (reward seed 0), with sampled and with most likely arms, paired
   with Gittins per bandit; and its exploration profile (:func:`metarl.bandits.exploration_profile`).

A cloned policy level with Gittins says the GRU can hold Gittins play and the gap of the PPO-trained agent is
in what PPO finds; a cloned policy below it says the gap is (at least partly) in the policy class.

Run: ``python benchmarks/rl2_bandit_imitation.py --n 100 --k 10`` (one setting per call; each call merges its
entry into the results file) or ``--quick`` (a few updates, 50 test bandits, temporary file).
Results: ``benchmarks/results/rl2_bandit_imitation.json``.
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
from torch.distributions import Categorical, Distribution

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adaptation_common import machine_line  # noqa: E402
from rl2_bandits import entry_name, evaluation_trials, merge_entry  # noqa: E402
from rl2_tabular_imitation import clone, expert_floor, imitation_scores  # noqa: E402

from metarl.bandits import Gittins, exploration_profile, play  # noqa: E402
from metarl.checkpoint import save_checkpoint  # noqa: E402
from metarl.cli import _parse_env_kwargs, build_learner  # noqa: E402
from metarl.envs.bandit import BanditEnv  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402
from metarl.trials import collect_trials  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_bandit_imitation.json"


class GittinsExpert:
    """Gittins-index play as a memory model over RL²'s bandit inputs ``[obs (1), previous arm (k one-hot),
    previous reward, done]``; state ``[B, 2 k]``: every arm's successes, then failures, in the trial so far."""

    def __init__(self, n_arms: int, n_pulls: int) -> None:
        strategy = Gittins()  # the strategy of the baselines: its discount, prior and table resolution
        strategy.reset(1, n_arms, n_pulls, np.random.default_rng(0))
        assert strategy.table is not None
        # index[s, f] for s + f <= n - 1 (every real decision); the rollout's step past the trial's end can
        # count n pulls of one arm: those entries (NaN or outside the table) are made the lowest index.
        table = np.nan_to_num(strategy.table.index, nan=-1.0)
        self.index = torch.from_numpy(np.pad(table, ((0, 1), (0, 1)), constant_values=-1.0))
        self.k = n_arms

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 2 * self.k)

    def step(self, inputs: torch.Tensor, state: torch.Tensor,
             time: torch.Tensor) -> tuple[Distribution, torch.Tensor, torch.Tensor]:
        k = self.k
        prev_arm, prev_reward = inputs[:, 1:1 + k], inputs[:, 1 + k]
        successes = state[:, :k] + prev_arm * prev_reward[:, None]
        failures = state[:, k:] + prev_arm * (1.0 - prev_reward[:, None])
        last = self.index.shape[0] - 1
        index = self.index[successes.long().clamp(max=last), failures.long().clamp(max=last)]  # [B, k] float64
        best = index == index.max(dim=1, keepdim=True).values  # exact ties, as Gittins' own argmax
        logits = torch.where(best, 0.0, -torch.inf)
        return Categorical(logits=logits), torch.zeros(inputs.shape[0]), torch.cat([successes, failures], dim=1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="pulls per trial")
    parser.add_argument("--k", type=int, default=10, help="arms")
    parser.add_argument("--updates", type=int, default=3000, help="behaviour-cloning updates")
    parser.add_argument("--trials", type=int, default=64, help="expert trials per update")
    parser.add_argument("--hidden-size", type=int, default=128, help="GRU units (the bandit headline's)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="RL² config value (JSON), e.g. value_core=separate to fit rl2_bandits.py --init")
    parser.add_argument("--save", type=Path, default=None,
                        help="write the cloned model's weights here (rl2_bandits.py --init starts PPO from them)")
    parser.add_argument("--quick", action="store_true", help="a few updates, 50 test bandits, temporary file")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    for name in ("n", "k", "updates", "trials", "hidden_size"):
        if getattr(args, name) < (2 if name == "k" else 1):
            parser.error(f"--{name.replace('_', '-')} must be at least {2 if name == 'k' else 1}, "
                         f"got {getattr(args, name)}")
    torch.set_num_threads(1)
    updates, n_test = (3, 50) if args.quick else (args.updates, 1000)
    out = args.out or (Path(tempfile.mkdtemp()) / "rl2_bandit_imitation.json" if args.quick else RESULTS)
    t0 = time.perf_counter()
    config = {"episodes_per_trial": 1, "hidden_size": 8 if args.quick else args.hidden_size,
              **_parse_env_kwargs(args.set)}
    env_kwargs = {"n_arms": args.k, "n_pulls": args.n}
    learner, envs = build_learner("rl2", "metarl/Bandit-v0", env_kwargs, config, args.seed, "cpu")
    expert = GittinsExpert(args.k, args.n)
    curve = clone(learner, envs, expert, updates, args.trials, 1, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    if args.save is not None:
        save_checkpoint(args.save, {"model": learner.model.state_dict(), "algo": "rl2", "algo_config": config,
                                    "env": "metarl/Bandit-v0", "env_kwargs": env_kwargs, "updates": updates})

    tasks = BanditEnv(n_arms=args.k).sample_tasks(n_test, np.random.default_rng(0), split="test")
    probs = np.array([t.probs for t in tasks])
    batch = evaluation_trials(learner, tasks)
    sampled = batch.rewards.sum(0).numpy().astype(np.float64)
    cloned_arms = batch.actions.numpy().astype(np.int64).T[:, :args.n]
    greedy = learner.adapt_many(tasks, 0, seed=0, episodes_per_step=1, greedy=True).stage_returns[:, 0]
    gittins = play(Gittins(), probs, args.n, seed=0)
    expert_batch = collect_trials(envs.vector(n_test), expert, tasks, 1, 1, seed=0, horizon=envs.horizon)
    expert_total = expert_batch.trial_returns.numpy().astype(np.float64)
    with torch.no_grad():  # the cloned policy on the expert's test trials, teacher-forced
        dist, _, _ = learner.model.evaluate(expert_batch.inputs, learner.model.initial_state(n_test))
        test_ce, test_agree = (float(x) for x in imitation_scores(dist, expert_batch))
    entry = {
        "n_pulls": args.n, "n_arms": args.k, "config": config, "updates": updates, "trials_per_update": args.trials,
        "lr": args.lr, "train_wall_time_s": train_s, "quick": args.quick,
        "test": {"n_bandits": n_test, "split": "test", "task_seed": 0, "reward_seed": 0},
        "cloned_sampled": mean_ci95(sampled).to_dict(), "cloned_greedy": mean_ci95(greedy).to_dict(),
        "gittins": mean_ci95(gittins.total_reward).to_dict(),
        "cloned_sampled_minus_gittins": mean_ci95(sampled - gittins.total_reward).to_dict(),
        "cloned_greedy_minus_gittins": mean_ci95(greedy - gittins.total_reward).to_dict(),
        # the expert through RL²'s inputs and rollout on the same draws: equals Gittins up to its tie-breaking
        "expert_through_rollout": mean_ci95(expert_total).to_dict(),
        "exploration": {name: {key: mean_ci95(v).to_dict() for key, v in exploration_profile(arms, probs).items()}
                        for name, arms in (("cloned", cloned_arms), ("gittins", gittins.arms))},
        "final_agreement": float(np.mean([row["agreement"] for row in curve[-20:]])),
        "final_cross_entropy": float(np.mean([row["loss"] for row in curve[-20:]])),
        "test_expert_trials": {"cross_entropy": test_ce, "agreement": test_agree,
                               "perfect_imitator": expert_floor(expert, expert_batch)},
        "curve": curve[:: max(len(curve) // 100, 1)],
        **({"saved_to": str(args.save)} if args.save is not None else {}),
        "command": " ".join(["python benchmarks/rl2_bandit_imitation.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    setup = {"expert": "Gittins index play (metarl.bandits.Gittins) read from RL²'s inputs (GittinsExpert)",
             "env": "metarl/Bandit-v0"}
    key = f"{entry_name('rl2', config)}_n{args.n}_k{args.k}"
    final = merge_entry(out, key, entry, setup, time.perf_counter() - t0)
    print(readme_table(final))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return entry


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_bandit_imitation.json``."""
    def cell(ci: dict[str, Any], sign: str = "") -> str:
        return f"{ci['mean']:{sign}.1f} ± {ci['ci95']:.1f}"

    lines = ["### RL²'s GRU cloned from Gittins play (bandits; total reward over n pulls, held-out test bandits)", "",
             f"`python benchmarks/rl2_bandit_imitation.py` ({machine_line(d)})", "",
             "| n, k | GRU | cloned, sampled arms | cloned, most likely arms | Gittins (same bandits and draws) | "
             "sampled − Gittins (paired) | most likely − Gittins | arms tried, cloned / Gittins | "
             "agreement on the expert's test trials (perfect imitator) | updates x trials | training |",
             "|" + " --- |" * 11]
    for e in sorted(d["entries"].values(), key=lambda e: (-e["n_pulls"], e["n_arms"])):
        x, ex = e["test_expert_trials"], e["exploration"]
        lines.append(f"| {e['n_pulls']}, {e['n_arms']} | {e['config']['hidden_size']} | {cell(e['cloned_sampled'])} | "
                     f"{cell(e['cloned_greedy'])} | {cell(e['gittins'])} | "
                     f"{cell(e['cloned_sampled_minus_gittins'], '+')} | "
                     f"{cell(e['cloned_greedy_minus_gittins'], '+')} | "
                     f"{ex['cloned']['arms_tried']['mean']:.2f} / {ex['gittins']['arms_tried']['mean']:.2f} | "
                     f"{x['agreement']:.1%} ({x['perfect_imitator']['agreement']:.1%}) | "
                     f"{e['updates']} x {e['trials_per_update']} | {e['train_wall_time_s'] / 60:.0f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
