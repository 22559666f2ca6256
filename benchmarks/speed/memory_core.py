"""The memory agents' cores: eager vs ``torch.compile``-d step (MANN's ``--compile-step``), and RL²'s GRU and
attention cores.

Workload (the RL² bandit setting, n = 100 pulls, k = 5 arms: memory input ``obs 1 + previous action 5 +
reward 1 + done 1 = 8`` wide, :func:`metarl.trials.memory_input_dim`):

- ``update``: unroll 100 steps of 16 trials (one PPO minibatch of a 64-trial batch) and backpropagate
  a loss of the outputs and the final state: what dominates a training iteration (16 such passes per
  iteration; a cProfile of ``meta_train_step`` put 75-85% of its time there).
- ``rollout``: one step of 64 trials without gradients (the batched trial rollout calls it 100 times
  per iteration).

Implementations: ``mann eager`` (``NTMCore`` with the default config: LSTM controller 128, 16 slots of
width 16, 1 read head), ``mann compiled`` (the same weights with ``compile_step=True``), and ``rl2 gru``
(``GRUCore`` with 128 units: the reference cost of RL² on the same workload) and ``rl2 attention``
(``AttentionCore``, RL²'s ``--core attention`` defaults: width 128, 2 blocks, 4 heads, a window of the
trial's 100 steps), and ``mann lrua compiled`` (MANN with ``addressing="lrua"``, Santoro et al.'s least recently
used access, same sizes, compiled; its arithmetic is checked against its eager form in tests/test_mann.py,
and its first call's compilation is reported beside NTM's). Every implementation is
first checked against eager MANN on the same inputs (compiled: same outputs and gradients, rtol 1e-4 in
float32). Rounds interleave the implementations; reported are median / min / max seconds over rounds and
the ratio ``eager / compiled`` per round, plus the time of the first compiled call of each shape
(compilation, from an empty inductor cache).

Run: ``python benchmarks/speed/memory_core.py`` (a few minutes, most of it compiling) or ``--quick``.
Results: ``benchmarks/results/speed_memory_core.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

# An empty compile cache, so that "first compiled call" is the compilation a new user waits for
# (with a warm cache from an earlier run it takes seconds).
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="metarl-inductor-")
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS as RESULTS_DIR  # noqa: E402
from common import fmt_spread, load_average, machine_line, paired_ratios, summary, write_and_print  # noqa: E402

from metarl.agents.mann import MANNConfig, NTMCore  # noqa: E402
from metarl.agents.rl2 import GRUCore  # noqa: E402
from metarl.attention import AttentionCore  # noqa: E402
from metarl.envs.bandit import BanditEnv  # noqa: E402
from metarl.trials import memory_input_dim  # noqa: E402

RESULTS = RESULTS_DIR / "speed_memory_core.json"
INPUT = memory_input_dim(BanditEnv(n_arms=5).observation_space, BanditEnv(n_arms=5).action_space)


def workloads(core: torch.nn.Module, steps: int, update_batch: int, rollout_batch: int,
              seed: int = 0) -> dict[str, Callable[[], Any]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, update_batch, INPUT, generator=g)
    s0 = core.initial_state(update_batch, "cpu")  # type: ignore[operator]
    x1 = torch.randn(rollout_batch, INPUT, generator=g)
    s1 = core.initial_state(rollout_batch, "cpu")  # type: ignore[operator]
    params = list(core.parameters())

    def update() -> list[torch.Tensor]:
        out, final = core.unroll(x, s0)  # type: ignore[operator]
        loss = out.square().mean() + final.sum()
        return [out.detach(), *torch.autograd.grad(loss, params)]

    def rollout() -> torch.Tensor:
        with torch.no_grad():
            for _ in range(steps):
                out, _ = core.step(x1, s1)  # type: ignore[operator]
        return out

    return {"update": update, "rollout": rollout}


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="10 steps, 2 rounds, temporary output")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps, rounds = (10, 2) if args.quick else (100, args.rounds)
    out = args.out or (Path(tempfile.mkdtemp()) / RESULTS.name if args.quick else RESULTS)
    t_start = time.perf_counter()
    before = load_average()

    torch.manual_seed(0)
    eager = NTMCore(INPUT, MANNConfig())
    compiled = NTMCore(INPUT, MANNConfig(compile_step=True))
    compiled.load_state_dict(eager.state_dict())
    gru = GRUCore(INPUT, 128)
    attention = AttentionCore(INPUT, 128, layers=2, heads=4, context=steps)
    lrua = NTMCore(INPUT, MANNConfig(addressing="lrua", compile_step=True))
    impls = {name: workloads(core, steps, 16, 64) for name, core in
             (("mann eager", eager), ("mann compiled", compiled), ("rl2 gru", gru), ("rl2 attention", attention),
              ("mann lrua compiled", lrua))}

    compile_s: dict[str, float] = {}
    lrua_compile_s: dict[str, float] = {}
    for part in ("update", "rollout"):  # first calls: compilation (compiled), warm-up (others)
        ref = impls["mann eager"][part]()
        t = timed(lambda p=part: impls["mann compiled"][p]())
        compile_s[part] = t
        got = impls["mann compiled"][part]()
        for a, b in zip(got if isinstance(got, list) else [got], ref if isinstance(ref, list) else [ref], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        impls["rl2 gru"][part]()
        impls["rl2 attention"][part]()
        lrua_compile_s[part] = timed(lambda p=part: impls["mann lrua compiled"][p]())
    runs: dict[str, dict[str, list[float]]] = {part: {name: [] for name in impls} for part in ("update", "rollout")}
    for r in range(rounds):
        order = list(impls) if r % 2 == 0 else list(reversed(impls))
        for part in ("update", "rollout"):
            for name in order:
                runs[part][name].append(timed(impls[name][part]))
    rows = []
    for part, by_name in runs.items():
        rows.append({"workload": part, "seconds": {name: summary(v) for name, v in by_name.items()},
                     "eager_over_compiled": paired_ratios(by_name["mann eager"], by_name["mann compiled"]),
                     "mann_compiled_over_gru": paired_ratios(by_name["mann compiled"], by_name["rl2 gru"]),
                     "attention_over_gru": paired_ratios(by_name["rl2 attention"], by_name["rl2 gru"]),
                     "lrua_over_ntm_compiled": paired_ratios(by_name["mann lrua compiled"], by_name["mann compiled"]),
                     "first_compiled_call_s": compile_s[part], "lrua_first_compiled_call_s": lrua_compile_s[part]})
        s = rows[-1]["eager_over_compiled"]
        print(f"{part}: eager / compiled {s['median']:.2f}x [{s['min']:.2f}, {s['max']:.2f}]", file=sys.stderr)
    payload = {
        "benchmark": "speed_memory_core", "quick": args.quick, "device": "cpu", "threads": 1,
        "workload": {"steps": steps, "update_trials": 16, "rollout_trials": 64, "input": INPUT,
                     "mann": "LSTM 128, 16 slots x 16, 1 read head (MANNConfig defaults)", "gru": 128,
                     "attention": f"width 128, 2 blocks, 4 heads, window {steps}",
                     "mann lrua": "the same sizes with addressing=lrua"},
        "rounds": rounds, "agreement": "compiled == eager outputs and gradients, rtol 1e-4 / atol 1e-5 (float32)",
        "load_average": {"before": before, "after": load_average()}, "rows": rows,
    }
    write_and_print(out, payload, time.perf_counter() - t_start, readme_table)
    return payload


def readme_table(d: dict[str, Any]) -> str:
    attention = all("rl2 attention" in r["seconds"] for r in d["rows"])  # results from before it: no column
    lrua = all("mann lrua compiled" in r["seconds"] for r in d["rows"])
    lines = ["### Memory cores: MANN eager vs `--compile-step` (torch.compile), RL²'s GRU" +
             (" and attention" if attention else "") + (", MANN with LRUA" if lrua else "") +
             " (seconds, median [min, max])", "",
             f"`python benchmarks/speed/memory_core.py` ({machine_line(d)}); update = {d['workload']['steps']}-step "
             f"unroll + backward of {d['workload']['update_trials']} trials, rollout = {d['workload']['steps']} "
             f"steps of {d['workload']['rollout_trials']} trials without gradients", "",
             "| workload | MANN eager | MANN compiled | eager / compiled | first compiled call (empty cache) "
             "| RL² GRU |" + (" RL² attention | attention / GRU |" if attention else "") +
             (" MANN LRUA compiled | LRUA / NTM (compiled) | LRUA first compiled call |" if lrua else ""),
             "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if attention else "") +
             (" --- | --- | --- |" if lrua else "")]
    for r in d["rows"]:
        s = r["seconds"]
        lines.append(f"| {r['workload']} | {fmt_spread(s['mann eager'], 3)} | {fmt_spread(s['mann compiled'], 3)} | "
                     f"{fmt_spread(r['eager_over_compiled'])}x | {r['first_compiled_call_s']:.0f} s | "
                     f"{fmt_spread(s['rl2 gru'], 3)} |" +
                     (f" {fmt_spread(s['rl2 attention'], 3)} | {fmt_spread(r['attention_over_gru'])}x |"
                      if attention else "") +
                     (f" {fmt_spread(s['mann lrua compiled'], 3)} | {fmt_spread(r['lrua_over_ntm_compiled'])}x | "
                      f"{r['lrua_first_compiled_call_s']:.0f} s |" if lrua else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
