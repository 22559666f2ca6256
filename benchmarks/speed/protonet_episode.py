"""ProtoNet training episodes per second, metarl vs a plain-torch ProtoNet, side by side (issue 6, item 2).

Workload: Conv-4 with max-pooling (Snell et al. 2017: four ``3x3 conv (64) -> BatchNorm -> ReLU ->
2x2 max-pool`` blocks, 64 features for 1x28x28 inputs) on random images, in two settings: the paper's
Omniglot training episodes, 60-way 5-shot with 5 queries per class (600 images), and 5-way 1-shot with
15 queries per class (80 images). One *episode* is: zero the gradients, embed support and queries in
one batch, prototypes, the cross-entropy of the negative squared distances, backward, one Adam step.

Implementations, from the same initial weights on the same episode:

- ``metarl``: :class:`metarl.agents.protonet.ProtoNetLearner` ``.meta_train_step`` (what a user runs,
  with its defaults: channels-last weights, prototypes by label, the learning-rate schedule and the
  logged loss and accuracy).
- ``plain torch``: the ProtoNet a user writes from the paper: ``nn.Sequential`` of the same blocks,
  prototypes as ``view(ways, shots, D).mean(1)`` of the class-major support embeddings, distances by
  broadcasting, the loss and accuracy read back every episode like the reference code.

Protocol. (1) Agreement first: in float64 both must give the same loss and gradient (relative error of
the whole gradient vector <= 1e-9) on the same episode, or nothing is timed. (2) Timing: each (setting,
implementation) runs in its own fresh process (its peak RSS is its own), one warm-up episode then
``--iters`` timed ones; rounds repeat, implementations interleaved in a rotating order. Reported: episodes
per second (median / min / max over all timed episodes, wall clock; CPU time too), the ratio
``plain / metarl`` of seconds per episode per round (median / min / max), peak RSS, the host's load.

Run: ``python benchmarks/speed/protonet_episode.py`` (a few minutes) or ``--quick`` (small episodes, all in
this process). Results: ``benchmarks/results/speed_protonet.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as TF
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
    fmt_rate,
    fmt_spread,
    load_average,
    machine_line,
    paired_ratios,
    peak_rss_mb,
    rss_mb,
    run_worker,
    summary,
    write_and_print,
)

from metarl.agents.protonet import ProtoNetConfig, ProtoNetLearner  # noqa: E402
from metarl.supervised import Problem  # noqa: E402
from metarl.types import Episode  # noqa: E402

OUT = RESULTS / "speed_protonet.json"
IMPLEMENTATIONS = ("metarl", "plain torch")
LR = 1e-3
AGREEMENT_RTOL = 1e-9


@dataclass(frozen=True)
class Setting:
    """``ways``-way ``shots``-shot episodes with ``queries`` queries per class."""

    ways: int
    shots: int
    queries: int

    @property
    def name(self) -> str:
        return f"{self.ways}-way {self.shots}-shot, {self.queries} queries/class"

    def encode(self) -> str:
        return f"{self.ways},{self.shots},{self.queries}"

    @staticmethod
    def decode(text: str) -> Setting:
        n, k, q = (int(v) for v in text.split(","))
        return Setting(n, k, q)


def episode(s: Setting, seed: int, dtype: torch.dtype) -> Episode:
    """A random class-major episode, images ``[1, 28, 28]``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(s.ways)
    return Episode(torch.rand(s.ways * s.shots, 1, 28, 28, generator=g, dtype=dtype),
                   labels.repeat_interleave(s.shots),
                   torch.rand(s.ways * s.queries, 1, 28, 28, generator=g, dtype=dtype),
                   labels.repeat_interleave(s.queries), ways=s.ways)


def plain_conv4(hidden: int = 64) -> nn.Sequential:
    """The embedding as a user writes it; module names equal :class:`metarl.nets.Conv4`'s ``features``."""
    blocks: list[nn.Module] = []
    for i in range(4):
        blocks += [nn.Conv2d(1 if i == 0 else hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(),
                   nn.MaxPool2d(2)]
    return nn.Sequential(nn.Sequential(*blocks), nn.Flatten())


class PlainProtoNet:
    """A user's training step: embed ``cat([support, query])``, class means, negative squared distances."""

    def __init__(self, net: nn.Sequential) -> None:
        self.net = net
        self.optimizer = torch.optim.Adam(net.parameters(), lr=LR)

    def loss(self, e: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        n_support = e.support_x.shape[0]
        z = self.net(torch.cat([e.support_x, e.query_x]))
        protos = z[:n_support].view(e.ways, n_support // e.ways, -1).mean(1)
        logits = -((z[n_support:, None, :] - protos[None]) ** 2).sum(-1)
        return TF.cross_entropy(logits, e.query_y), logits

    def step(self, e: Episode) -> dict[str, float]:
        self.net.train()
        self.optimizer.zero_grad()
        loss, logits = self.loss(e)
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "acc": (logits.argmax(1) == e.query_y).float().mean().item()}


class Implementation:
    """One implementation: ``step(episode)`` is one training episode; ``parameters()`` its weights."""

    def __init__(self, name: str, ways: int, dtype: torch.dtype, seed: int) -> None:
        self.name = name
        if name == "metarl":
            self.learner = ProtoNetLearner(ProtoNetConfig(backbone="conv4-pool", lr=LR),
                                           Problem("classification", (1, 28, 28), ways), seed=seed)
            self.net: nn.Module = self.learner.net.to(dtype)
            return
        if name != "plain torch":
            raise ValueError(f"unknown implementation {name!r}; choose from {IMPLEMENTATIONS}")
        torch.manual_seed(seed)
        self.net = plain_conv4().to(dtype)
        reference = ProtoNetLearner(ProtoNetConfig(backbone="conv4-pool"), Problem("classification", (1, 28, 28),
                                                                                  ways), seed=seed)
        self.net[0].load_state_dict(reference.net.features.state_dict())  # the same initial weights
        self.plain = PlainProtoNet(self.net)  # type: ignore[arg-type]

    def step(self, e: Episode) -> float:
        """One training episode; returns its loss (before the Adam step)."""
        if self.name == "metarl":
            return self.learner.meta_train_step([e])["train/loss"]
        return self.plain.step(e)["loss"]

    def gradient(self) -> torch.Tensor:
        return torch.cat([p.grad.reshape(-1) for p in self.net.parameters()])  # type: ignore[union-attr]


def agreement(settings: Sequence[Setting], seed: int) -> list[dict[str, Any]]:
    """Loss and flat gradient of both implementations in float64 on one episode of each setting."""
    rows = []
    for s in settings:
        e = episode(s, seed + 1, torch.float64)
        out = {}
        for name in IMPLEMENTATIONS:
            impl = Implementation(name, s.ways, torch.float64, seed)
            out[name] = (impl.step(e), impl.gradient())
        (loss_m, g_m), (loss_p, g_p) = out["metarl"], out["plain torch"]
        row = {"setting": asdict(s), "loss": {"metarl": loss_m, "plain torch": loss_p},
               "loss_relative_error": abs(loss_p - loss_m) / abs(loss_m),
               "gradient_relative_error": float((g_p - g_m).norm() / g_m.norm()), "tolerance": AGREEMENT_RTOL}
        rows.append(row)
        if not (row["loss_relative_error"] <= AGREEMENT_RTOL and row["gradient_relative_error"] <= AGREEMENT_RTOL):
            raise SystemExit(f"ProtoNet implementations disagree on {s.name} (float64): {row}; nothing is timed")
        print(f"agreement {s.name}: loss {row['loss_relative_error']:.1e}, gradient "
              f"{row['gradient_relative_error']:.1e}", flush=True)
    return rows


def worker(name: str, s: Setting, iters: int, threads: int, seed: int) -> dict[str, Any]:
    """One implementation in this (fresh) process: warm-up, ``iters`` timed episodes, memory."""
    torch.set_num_threads(threads)
    impl = Implementation(name, s.ways, torch.float32, seed)
    e = episode(s, seed + 1, torch.float32)
    impl.step(e)
    before = rss_mb()
    times, cpu_times = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        impl.step(e)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    return {"times_s": times, "cpu_times_s": cpu_times, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb()}


def grid(quick: bool) -> list[tuple[Setting, int]]:
    """Settings and their timed episodes per worker (about the same seconds for each)."""
    if quick:
        return [(Setting(5, 1, 3), 2)]
    return [(Setting(60, 5, 5), 6), (Setting(5, 1, 15), 40)]


def summarise(s: Setting, raw: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rounds = {n: [summary(r["times_s"])["median"] for r in raw[n]] for n in IMPLEMENTATIONS}
    cpu_rounds = {n: [summary(r["cpu_times_s"])["median"] for r in raw[n]] for n in IMPLEMENTATIONS}
    impls = {}
    for n in IMPLEMENTATIONS:
        seconds = [t for r in raw[n] for t in r["times_s"]]
        impls[n] = {"seconds": summary(seconds), "episodes_per_s": summary([1 / t for t in seconds]),
                    "cpu_seconds": summary([t for r in raw[n] for t in r["cpu_times_s"]]),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in raw[n]),
                    "workload_rss_mb": max(r["peak_rss_mb"] - r["rss_before_mb"] for r in raw[n])}
    return {"setting": asdict(s), "name": s.name, "implementations": impls,
            "ratio_plain_vs_metarl": paired_ratios(rounds["plain torch"], rounds["metarl"]),
            "cpu_ratio_plain_vs_metarl": paired_ratios(cpu_rounds["plain torch"], cpu_rounds["metarl"]),
            "memory_metarl_vs_plain": impls["metarl"]["peak_rss_mb"] / impls["plain torch"]["peak_rss_mb"]}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small setting, one round, in this process")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; quick 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed episodes per worker (default: per setting)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the host is shared)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    for name, value in (("rounds", rounds), ("iters", args.iters or 1), ("threads", args.threads)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.worker:
        print(json.dumps(worker(args.worker[0], Setting.decode(args.worker[1]), args.iters or 1, args.threads,
                                args.seed)))
        return {}

    wall = time.perf_counter()
    load_before = load_average()
    settings = grid(args.quick)
    checks = agreement([s for s, _ in settings], args.seed)
    script = Path(__file__).resolve()
    raw: dict[Setting, dict[str, list[dict[str, Any]]]] = {s: {n: [] for n in IMPLEMENTATIONS} for s, _ in settings}
    for r in range(rounds):
        for s, default_iters in settings:
            iters = args.iters or default_iters
            order = IMPLEMENTATIONS[r % 2:] + IMPLEMENTATIONS[:r % 2]
            for name in order:
                if args.quick:
                    res = worker(name, s, iters, args.threads, args.seed)
                else:
                    res = run_worker(script, [name, s.encode(), "--iters", str(iters), "--threads", str(args.threads),
                                              "--seed", str(args.seed)])
                raw[s][name].append(res)
                print(f"round {r + 1}/{rounds} {s.name:34s} {name:12s} "
                      f"{1 / summary(res['times_s'])['median']:.2f} episodes/s, peak RSS {res['peak_rss_mb']:.0f} MB",
                      flush=True)
    payload = {
        "benchmark": "speed_protonet",
        "quick": args.quick,
        "device": "cpu",
        "threads": args.threads,
        "workload": {"network": "Conv-4 with 2x2 max-pooling, 64 channels, BatchNorm (batch statistics in training)",
                     "images": "random 1x28x28", "optimizer": f"Adam {LR}",
                     "episode": "zero_grad + embed support and queries in one batch + prototypes + cross-entropy "
                                "of negative squared distances + backward + Adam step"},
        "protocol": {"rounds": rounds, "warmup_episodes": 1,
                     "timed_episodes_per_worker": {s.name: args.iters or i for s, i in settings},
                     "process": "one fresh process per (setting, implementation) and round; implementations "
                                "interleaved in a rotating order" if not args.quick else
                                "--quick: all workers in this process (peak memory is not per implementation)",
                     "ratio": "plain-torch seconds / metarl seconds per episode, per round (medians of the "
                              "worker's timed episodes), then median/min/max over rounds"},
        "agreement": checks,
        "load_average": {"before": load_before, "after": load_average()},
        "rows": [summarise(s, raw[s]) for s, _ in settings],
    }
    out = args.out or (Path(tempfile.mkdtemp()) / "speed_protonet.json" if args.quick else OUT)
    write_and_print(out, payload, time.perf_counter() - wall, readme_table)
    return payload


def readme_table(d: dict[str, Any]) -> str:
    """The README's table of this benchmark: episodes/s of both, their ratio, peak memory."""
    lines = ["### ProtoNet training episode, metarl vs plain torch (Conv-4; episodes/s, median [min, max]; ratio = "
             "plain seconds / metarl seconds)", "",
             f"`python benchmarks/speed/protonet_episode.py` ({machine_line(d)})", "",
             "| setting | metarl | plain torch | speed-up | same, CPU time | peak RSS metarl / plain |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in d["rows"]:
        im = r["implementations"]
        m, p = im["metarl"]["episodes_per_s"], im["plain torch"]["episodes_per_s"]
        q = r["ratio_plain_vs_metarl"]
        lines.append(f"| {r['name']} | {fmt_rate(m['median'])} [{fmt_rate(m['min'])}, {fmt_rate(m['max'])}] | "
                     f"{fmt_rate(p['median'])} [{fmt_rate(p['min'])}, {fmt_rate(p['max'])}] | "
                     f"{fmt_spread(q, unit='x')} | {fmt_spread(r['cpu_ratio_plain_vs_metarl'], unit='x')} | "
                     f"{im['metarl']['peak_rss_mb']:.0f} / {im['plain torch']['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
