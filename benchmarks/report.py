"""Markdown tables for the README, generated from the committed results files.

    python benchmarks/report.py            # print the tables
    python benchmarks/report.py --check    # exit 1 if README.md's generated section is stale

The README's block between ``<!-- BENCHMARKS:BEGIN -->`` and ``<!-- BENCHMARKS:END -->`` is
exactly this script's output (a test checks it), so every number there comes from a results file
written by a script in ``benchmarks/``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"
BEGIN, END = "<!-- BENCHMARKS:BEGIN -->", "<!-- BENCHMARKS:END -->"


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _machine(d: dict[str, Any]) -> str:
    m = d["provenance"]["machine"]
    wall = d["provenance"].get("wall_time_s")
    wall_s = f", {wall:.0f} s" if isinstance(wall, (int, float)) else ""
    return f"{m['cpu']}, {m['cpu_count']} cores, torch {m['torch']}{wall_s}; commit {d['provenance']['commit'][:7]}"


def _rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.0f}k"


def throughput_table() -> str:
    d = _load("env_throughput")
    if d is None:
        return ""
    lines = ["### Batched task envs vs `SyncVectorEnv` (steps/s, random actions, median of repeats)", "",
             f"`python benchmarks/env_throughput.py` ({_machine(d)})", "",
             "| env | envs | batched | SyncVectorEnv | ratio | AsyncVectorEnv | ratio |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    target = d["target"]["ratio_at_least"]
    for r in d["rows"]:
        if r.get("status") != "ok":
            lines.append(f"| {r['env_id']} | {r.get('num_envs', '')} | skipped: {r.get('status')} | | | | |")
            continue
        cells = (f"{_rate(r['async_steps_per_s']['median'])} | {r['ratio_vs_async']:.0f}x"
                 if "async_steps_per_s" in r else "not run | ")
        lines.append(f"| {r['env_id']} | {r['num_envs']} | {_rate(r['batched_steps_per_s']['median'])} | "
                     f"{_rate(r['sync_steps_per_s']['median'])} | {_ratio(r, target)} | {cells} |")
    return "\n".join(lines)


def _ratio(r: dict[str, Any], target: float) -> str:
    """Batched / sync, with a decimal below 100x (a ratio of 49.5 must not read as the 50x target), and a
    mark where the row is one of the target's (met or not)."""
    x = r["ratio"]
    mark = {True: " (target met)", False: f" (target {target:.0f}x: not met)"}.get(r.get("meets_target"), "")
    return (f"{x:.1f}x" if x < 100 else f"{x:.0f}x") + mark


def bandit_table() -> str:
    d = _load("bandit_baselines")
    if d is None:
        return ""
    cols = [("random", "random"), ("gittins", "Gittins"), ("thompson", "Thompson"), ("ucb1", "UCB1"),
            ("greedy", "greedy"), ("epsilon_greedy", "ε-greedy")]
    lines = ["### Classical bandit strategies (total reward over n pulls, 1000 held-out bandits, mean ± 95% CI; "
             "RL² paper's Table 1 in brackets)", "",
             f"`python benchmarks/bandit_baselines.py` ({_machine(d)})", "",
             "| n, k | " + " | ".join(c[1] for c in cols) + " | RL² (paper) |",
             "| --- |" + " --- |" * (len(cols) + 1)]
    for s in d["settings"]:
        cells = []
        for key, _ in cols:
            r = s["results"][key]
            paper = f" ({r['paper']})" if r.get("paper") is not None else ""
            cells.append(f"{r['mean']:.1f} ± {r['ci95']:.1f}{paper}")
        rl2 = s.get("paper_rl2")
        rl2_cell = rl2 if rl2 is not None else ""
        lines.append(f"| {s['n_pulls']}, {s['n_arms']} | " + " | ".join(cells) + f" | {rl2_cell} |")
    return "\n".join(lines)


def cartpole_table() -> str:
    d = _load("cartpole_gap")
    if d is None:
        return ""
    names = [("random", "random"), ("robust", "robust (one PPO policy, state only)"),
             ("history1", "state + last transition"), ("oracle", "oracle (sees the parameters)")]
    lines = ["### CartPoleDynamics: adaptation matters (return over H=200, 200 tasks, mean ± 95% CI)", "",
             f"`python benchmarks/cartpole_gap.py` ({_machine(d)})", "",
             "| policy (SB3 PPO) | test tasks | ood tasks |", "| --- | --- | --- |"]
    for key, label in names:
        t, o = d["results"]["test"][key], d["results"]["ood"][key]
        lines.append(f"| {label} | {t['mean']:.1f} ± {t['ci95']:.1f} | {o['mean']:.1f} ± {o['ci95']:.1f} |")
    return "\n".join(lines)


SCRIPT_TABLES: tuple[str, ...] = ("maml_rl_navigation", "maml_rl_cartpole", "rl2_bandits", "rl2_bandit_imitation",
                                  "rl2_bandit_objective", "rl2_tabular", "tabular_baselines", "rl2_tabular_imitation",
                                  "rl2_trials", "rl2_critic_fit", "recurrent_ppo_bandits", "fewshot_omniglot",
                                  "fewshot_sinusoid")
"""Results files whose README table is rendered by ``readme_table(d)`` in the script of the same name."""



SPEED_TABLES: dict[str, str] = {"speed_maml": "maml_meta_iteration", "speed_protonet": "protonet_episode",
                                "speed_rollout": "rollout_collection", "speed_memory_core": "memory_core",
                                "speed_end_to_end": "end_to_end"}
"""Results files of ``benchmarks/speed/`` (``python benchmarks/speed/run_all.py``) and the script whose
``readme_table(d)`` renders each."""


def script_table(name: str, module: str | None = None, folder: Path = HERE) -> str:
    d = _load(name)
    if d is None:
        return ""
    sys.path.insert(0, str(folder))
    try:
        return str(importlib.import_module(module or name).readme_table(d))
    finally:
        sys.path.remove(str(folder))


def report() -> str:
    speed = [script_table(name, module, HERE / "speed") for name, module in SPEED_TABLES.items()]
    parts = [p for p in (throughput_table(), bandit_table(), cartpole_table(), *map(script_table, SCRIPT_TABLES),
                         *speed) if p]
    return "\n\n".join(parts) + "\n"


def readme_section(text: str) -> str | None:
    if BEGIN not in text or END not in text:
        return None
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if README.md's generated block is stale")
    parser.add_argument("--write", action="store_true", help="rewrite README.md's generated block")
    args = parser.parse_args()
    out = report()
    text = README.read_text()
    if args.write:
        if readme_section(text) is None:
            print(f"README.md has no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        head, rest = text.split(BEGIN, 1)
        README.write_text(head + BEGIN + "\n" + out + END + rest.split(END, 1)[1])
        return 0
    if args.check:
        if readme_section(text) != out:
            print("README.md's benchmark block is stale: run python benchmarks/report.py --write", file=sys.stderr)
            return 1
        return 0
    print(out, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
