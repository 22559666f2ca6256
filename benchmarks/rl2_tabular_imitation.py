"""Can RL²'s policy class play the tabular MDPs well? Behaviour cloning of the myopic strategy into it.

RL² meta-trained with PPO stays far below the classical strategies on the RL² tabular MDPs (121.3 at
n = 10 against 155.3 for greedy planning; ``benchmarks/rl2_tabular.py``), and the myopic strategy, which
only keeps the posterior-mean reward of every (state, action) pair (``benchmarks/tabular_baselines.py``:
154.8), shows that no planning is needed for those scores. This script asks whether the GRU policy can
*represent* such a strategy at all, separating what the architecture can hold from what PPO finds:

1. An exact expert in RL²'s own input format, :class:`MyopicExpert`: a :class:`metarl.trials.MemoryModel`
   whose state is the trial's visit counts and reward sums per (state, action); from the memory inputs
   ``x_t = [s_t, a_{t-1}, r_{t-1}, d_{t-1}]`` it updates the pair ``(s_{t-1}, a_{t-1})`` with ``r_{t-1}`` and takes
   the action of largest posterior-mean reward ``(1 + R(s, a)) / (1 + n(s, a))`` in ``s_t`` (the family's
   prior ``mu ~ N(1, 1)``, unit noise; ties uniformly at random). It re-plans every step, so it uses what the
   current episode has shown.
2. Its trials on *train* MDPs, collected by :func:`metarl.trials.collect_trials` (the rollout RL² trains on),
   give inputs and expert actions; an RL² agent of the headline size (GRU 256) is trained by cross-entropy
   on them (its value head is not used), fresh trials every update (DAgger is not needed to measure
   capacity: the expert's own state distribution is what a perfect imitator would see).
3. The cloned policy plays one trial on each of the 1000 *test* MDPs of ``rl2_tabular.py`` through
   :meth:`~metarl.recurrent.TrialPPOLearner.adapt_many`, with sampled and with most likely actions.

``--core attention`` clones into RL²'s attention core instead (:mod:`metarl.attention`, entry
``rl2_attention_n10``), the same question for a memory that can look past steps up by (state, action).
``--agent mann`` clones into MANN's controller and external memory (``agents/mann.py``; its memory's size via
``--set memory_slots=...``), the same question for a memory written and read by content.

Run: ``python benchmarks/rl2_tabular_imitation.py`` (17-20 minutes on one core; ``--core attention
--hidden-size 128 --updates 1500``: 12-15 minutes) or ``--quick``
(a few updates, 20 test MDPs, temporary file). Results: ``benchmarks/results/rl2_tabular_imitation.json``.
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
from rl2_bandits import add_entry_option, entry_name, merge_entry  # noqa: E402

from metarl.checkpoint import save_checkpoint  # noqa: E402
from metarl.cli import _parse_env_kwargs, build_learner  # noqa: E402
from metarl.envs.tabular_mdp import TabularMDPEnv  # noqa: E402
from metarl.stats import mean_ci95  # noqa: E402
from metarl.tabular import TabularPrior  # noqa: E402
from metarl.trials import MemoryModel, TrialBatch, collect_trials  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "rl2_tabular_imitation.json"


class MyopicExpert:
    """The myopic strategy as a memory model over RL²'s inputs; state ``[B, 2 S A + S]``: visit counts and
    reward sums of every (state, action) pair, and the one-hot of the previous step's state."""

    def __init__(self, n_states: int, n_actions: int, prior: TabularPrior | None = None) -> None:
        self.s, self.a, self.prior = n_states, n_actions, prior or TabularPrior()

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 2 * self.s * self.a + self.s)

    def step(self, inputs: torch.Tensor, state: torch.Tensor,
             time: torch.Tensor) -> tuple[Distribution, torch.Tensor, torch.Tensor]:
        s, a = self.s, self.a
        obs, prev_action, prev_reward = inputs[:, :s], inputs[:, s:s + a], inputs[:, s + a]
        counts, sums, prev_obs = state[:, :s * a], state[:, s * a:2 * s * a], state[:, 2 * s * a:]
        # The pair of the previous step is prev_obs x prev_action (all zero at the start of a trial).
        pair = (prev_obs[:, :, None] * prev_action[:, None, :]).flatten(1)
        counts, sums = counts + pair, sums + pair * prev_reward[:, None]
        p = self.prior  # the conjugate posterior mean of metarl.tabular.Posterior.mean_rewards
        q = ((p.reward_precision * p.reward_mean + p.noise_precision * sums)
             / (p.reward_precision + p.noise_precision * counts)).reshape(-1, s, a)
        q_here = (q * obs[:, :, None]).sum(1)  # [B, A], the current state's row
        best = q_here >= q_here.max(dim=1, keepdim=True).values - 1e-9
        logits = torch.where(best, 0.0, -torch.inf)
        return Categorical(logits=logits), torch.zeros(inputs.shape[0]), torch.cat([counts, sums, obs], dim=1)


def expert_floor(expert: MemoryModel, batch: TrialBatch) -> dict[str, float]:
    """On the expert's own trials: its mean action entropy (the cross-entropy a perfect imitator reaches, the
    expert breaking ties at random) and the argmax agreement a perfect imitator expects (1 / number of tied
    best actions)."""
    state = expert.initial_state(batch.inputs.shape[1])
    entropy, agreement = torch.zeros_like(batch.mask), torch.zeros_like(batch.mask)
    for t in range(batch.inputs.shape[0]):
        dist, _, state = expert.step(batch.inputs[t], state, torch.zeros(()))
        entropy[t] = dist.entropy()
        agreement[t] = 1.0 / (dist.probs > 0).sum(-1)
    m = batch.mask
    return {"entropy": float((entropy * m).sum() / m.sum()), "agreement": float((agreement * m).sum() / m.sum())}


def imitation_scores(dist: Distribution, batch: TrialBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's cross-entropy on the expert's actions and how often its argmax is the expert's action, over
    the real steps of ``batch``."""
    m = batch.mask
    cross_entropy = -(dist.log_prob(batch.actions) * m).sum() / m.sum()
    agreement = ((dist.probs.argmax(-1) == batch.actions).float() * m).sum() / m.sum()  # type: ignore[attr-defined]
    return cross_entropy, agreement


def clone(learner: Any, envs: Any, expert: MemoryModel, updates: int, trials: int, n_episodes: int, lr: float,
          seed: int) -> list[dict[str, float]]:
    """Cross-entropy of the learner's policy on fresh ``expert`` trials of *train* tasks of ``envs``' family,
    ``updates`` Adam steps."""
    optimizer = torch.optim.Adam(learner.model.parameters(), lr=lr)
    rng = np.random.default_rng(seed + 1)
    curve = []
    venv = envs.vector(trials)
    for update in range(updates):
        tasks = envs.env.unwrapped.sample_tasks(trials, rng, split="train")
        with torch.no_grad():
            batch = collect_trials(venv, expert, tasks, 1, n_episodes, seed=seed * 100_003 + update,
                                   horizon=envs.horizon)
        dist, _, _ = learner.model.evaluate(batch.inputs, learner.model.initial_state(trials))
        loss, agree = imitation_scores(dist, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.model.parameters(), 1.0)
        optimizer.step()
        curve.append({"update": update + 1, "loss": loss.item(), "agreement": agree.item(),
                      "expert_return": float(batch.trial_returns.mean())})
        if (update + 1) % max(updates // 20, 1) == 0:
            print(f"update {update + 1}/{updates}: cross-entropy {loss.item():.3f}, argmax agrees with the expert "
                  f"on {agree.item():.1%} of steps", file=sys.stderr, flush=True)
    return curve


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10, help="episodes per trial")
    parser.add_argument("--updates", type=int, default=4000, help="behaviour-cloning updates")
    parser.add_argument("--trials", type=int, default=64, help="expert trials per update")
    parser.add_argument("--agent", choices=("rl2", "mann"), default="rl2", help="the learner whose policy is cloned")
    parser.add_argument("--core", choices=("gru", "attention"), default="gru", help="RL²'s memory core")
    parser.add_argument("--hidden-size", type=int, default=256,
                        help="RL²: GRU units (the headline RL² run's) or the attention core's width")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="any other field of the agent's config (repeatable), e.g. memory_slots=64")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a few updates, 20 test MDPs, temporary file")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--save", type=Path, default=None,
                        help="write the cloned model's weights here (rl2_tabular.py --init starts PPO from them)")
    add_entry_option(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    updates, n_test = (3, 20) if args.quick else (args.updates, 1000)
    out = args.out or (Path(tempfile.mkdtemp()) / "rl2_tabular_imitation.json" if args.quick else RESULTS)
    t0 = time.perf_counter()
    if args.agent == "rl2":
        config = {"episodes_per_trial": args.n, "hidden_size": 8 if args.quick else args.hidden_size,
                  "core": args.core}
    else:
        config = {"episodes_per_trial": args.n, **({"controller_size": 8} if args.quick else {})}
    config.update(_parse_env_kwargs(args.set))
    learner, envs = build_learner(args.agent, "metarl/TabularMDP-v0", {}, config, args.seed, "cpu")
    expert = MyopicExpert(envs.env.unwrapped.n_states, envs.env.unwrapped.n_actions)
    curve = clone(learner, envs, expert, updates, args.trials, args.n, args.lr, args.seed)
    train_s = time.perf_counter() - t0
    if args.save is not None:
        save_checkpoint(args.save, {"model": learner.model.state_dict(), "algo": args.agent, "algo_config": config,
                                    "env": "metarl/TabularMDP-v0", "updates": updates})
    tasks = TabularMDPEnv().sample_tasks(n_test, np.random.default_rng(0), split="test")
    torch.manual_seed(0)
    sampled = learner.adapt_many(tasks, args.n - 1, seed=0, episodes_per_step=1).stage_returns.sum(1)
    greedy = learner.adapt_many(tasks, args.n - 1, seed=0, episodes_per_step=1, greedy=True).stage_returns.sum(1)
    batch = collect_trials(envs.vector(n_test), expert, tasks, 1, args.n, seed=0, horizon=envs.horizon)
    expert_total = batch.trial_returns.numpy().astype(np.float64)
    with torch.no_grad():  # the cloned policy on the expert's test trials, teacher-forced
        dist, _, _ = learner.model.evaluate(batch.inputs, learner.model.initial_state(n_test))
        test_ce, test_agree = (float(x) for x in imitation_scores(dist, batch))
    entry = {
        "n_episodes": args.n, "agent": args.agent, "config": config, "updates": updates,
        "trials_per_update": args.trials, "lr": args.lr,
        "train_wall_time_s": train_s, "quick": args.quick,
        **({"saved_to": str(args.save)} if args.save is not None else {}),
        "test": {"n_mdps": n_test, "split": "test", "task_seed": 0, "env_seed": 0},
        "cloned_sampled": mean_ci95(sampled).to_dict(), "cloned_greedy": mean_ci95(greedy).to_dict(),
        "expert": mean_ci95(expert_total).to_dict(),
        "cloned_greedy_minus_expert": mean_ci95(greedy - expert_total).to_dict(),
        "final_agreement": float(np.mean([row["agreement"] for row in curve[-20:]])),
        "final_cross_entropy": float(np.mean([row["loss"] for row in curve[-20:]])),
        "test_expert_trials": {"cross_entropy": test_ce, "agreement": test_agree,
                               "perfect_imitator": expert_floor(expert, batch)},
        "curve": curve[:: max(len(curve) // 100, 1)],
        "command": " ".join(["python benchmarks/rl2_tabular_imitation.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    setup = {"expert": "myopic strategy on the posterior-mean rewards (MyopicExpert)", "env": "metarl/TabularMDP-v0"}
    # Other entries (e.g. the other core's) are kept; each keeps the provenance of the run that made it.
    final = merge_entry(out, args.entry or f"{entry_name(args.agent, config)}_n{args.n}", entry, setup,
                        time.perf_counter() - t0)
    print(readme_table(final))
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return entry


def memory_label(agent: str, config: dict[str, Any]) -> str:
    """The memory core of a results entry, as the README table names it."""
    if agent == "mann":
        return (f"MANN ({config.get('addressing', 'ntm').upper()}): {config.get('controller', 'lstm').upper()} "
                f"{config.get('controller_size', 128)}, "
                f"{config.get('memory_slots', 16)} x {config.get('memory_width', 16)} memory, "
                f"{config.get('read_heads', 1)} read head{'s' if config.get('read_heads', 1) > 1 else ''}")
    core = config.get("core", "gru")
    return f"GRU {config['hidden_size']}" if core == "gru" else f"{core}, width {config['hidden_size']}"


def readme_table(d: dict[str, Any]) -> str:
    """The README table of ``rl2_tabular_imitation.json``."""
    def cell(ci: dict[str, Any]) -> str:
        return f"{ci['mean']:.1f} ± {ci['ci95']:.1f}"

    lines = ["### RL²'s and MANN's policies cloned from the myopic strategy (tabular MDPs; total reward of a trial, "
             "held-out MDPs)", "", f"`python benchmarks/rl2_tabular_imitation.py` ({machine_line(d)})", "",
             "| n episodes | memory core | cloned, sampled actions | cloned, most likely actions | expert (myopic, "
             "per-step) | cloned − expert (paired) | cross-entropy / agreement on the expert's test trials | same, "
             "perfect imitator | updates x trials | training |",
             "|" + " --- |" * 10]
    for e in d["entries"].values():
        x = e["test_expert_trials"]
        p = x["perfect_imitator"]
        size = memory_label(e.get("agent", "rl2"), e["config"])
        lines.append(f"| {e['n_episodes']} | {size} | {cell(e['cloned_sampled'])} | "
                     f"{cell(e['cloned_greedy'])} | {cell(e['expert'])} | {cell(e['cloned_greedy_minus_expert'])} | "
                     f"{x['cross_entropy']:.2f} / {x['agreement']:.1%} | {p['entropy']:.2f} / {p['agreement']:.1%} | "
                     f"{e['updates']} x {e['trials_per_update']} | "
                     f"{e['train_wall_time_s'] / 60:.0f} min |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
