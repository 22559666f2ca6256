"""MAML meta-iteration time, metarl vs the peer libraries, side by side (issue 6, item 1).

Workload (SPEED.md): Conv-4 with stride-2 convolutions and batch-statistics BatchNorm (the MAML paper's
Omniglot network, 64 channels, spatial-mean readout, a 5-way linear head) on random 1x28x28 images,
5-way 1-shot with 15 queries per class (5 support and 75 query images per task), inner SGD with step
size 0.4, the query loss after adaptation averaged over the meta-batch, one Adam step (1e-3). One
*meta-iteration* is: zero the gradients, the meta-gradient of the meta-batch, the Adam step. Settings:
meta-batch 8 and 32, 1 and 5 inner steps, second order and first order (FOMAML).

Implementations, each from the same initial weights and the same episodes:

- ``metarl``: :class:`metarl.agents.maml.MamlLearner` ``.meta_train_step`` (what a user runs; its default
  batching on this device, recorded in the results).
- ``higher``: ``higher.innerloop_ctx`` per task (its MAML Omniglot example); first order with
  ``track_higher_grads=False`` and the gradient with respect to the fast weights added to the initial ones.
- ``torchopt``: ``torchopt.MetaSGD`` on the module with ``extract_state_dict`` / ``recover_state_dict``
  per task (its MAML Omniglot example); first order through its functional ``torchopt.sgd`` on gradients
  taken without a graph.
- ``torch.func``: a plain per-task loop of ``torch.func.grad`` over ``functional_call`` (inner gradients
  wrapped in ``detach`` for first order).
- ``learn2learn``: ``l2l.algorithms.MAML`` if it can be imported. It cannot here: 0.2.0 ships only a
  source archive whose Cython extension does not build on Python 3.11 (``longintrepr.h: No such file or
  directory``), so it is skipped with that reason in the results.

The peers run the network a user of theirs writes: ``nn.BatchNorm2d`` with batch statistics
(``track_running_stats=False``, PyTorch's fused kernel); metarl runs its own Conv-4
(:class:`metarl.nets.BatchStatNorm2d`: the same fused kernel in its per-task loop, plain ops under
``vmap``, where they are exact). Both compute the same function.

Protocol. (1) Agreement first: in float64 on a meta-batch of 2, every implementation's meta-gradient for
each (order, steps) must match metarl's (relative error of the whole gradient vector <= 1e-9), or the
script stops before timing anything. (2) Timing: each (setting, implementation) runs in its own fresh
process (its peak RSS is its own), one warm-up meta-iteration then ``--iters`` timed ones; rounds repeat
the whole grid with the implementations interleaved in a rotating order. Reported per setting: seconds
per meta-iteration (median / min / max over all timed iterations; wall clock, and the process's CPU
time, which other jobs on a shared host disturb less), ratio ``peer / metarl`` per round (median / min /
max), peak RSS and its increase over the RSS before the first iteration, and the host's load average.
Target (issue): metarl >= 2x the fastest peer on CPU (>= 5x on a GPU), memory no higher.

Run: ``python benchmarks/speed/maml_meta_iteration.py`` (about half an hour on 2 loaded cores) or
``--quick`` (one small setting, every worker in this process, a temporary output file).
Results: ``benchmarks/results/speed_maml.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as TF
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS,
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

from metarl.agents.maml import MamlConfig, MamlLearner  # noqa: E402
from metarl.supervised import Problem  # noqa: E402
from metarl.types import Episode  # noqa: E402

OUT = RESULTS / "speed_maml.json"
IMPLEMENTATIONS = ("metarl", "higher", "torchopt", "torch.func")
PEERS = ("higher", "torchopt", "torch.func")
WAYS, SHOTS, QUERIES, INNER_LR, OUTER_LR = 5, 1, 15, 0.4, 1e-3
AGREEMENT_RTOL = 1e-9
LEARN2LEARN_BUILD = ("learn2learn 0.2.0 ships only a source archive; its Cython extension does not build on "
                     "Python 3.11 (gcc: learn2learn/data/meta_dataset.c: fatal error: longintrepr.h: No such "
                     "file or directory; `pip wheel learn2learn==0.2.0` fails)")


@dataclass(frozen=True)
class Setting:
    """One cell of the grid: ``meta_batch`` tasks, ``steps`` inner steps, second order or not."""

    meta_batch: int
    steps: int
    second_order: bool

    @property
    def name(self) -> str:
        return f"{'2nd' if self.second_order else '1st'} order, meta-batch {self.meta_batch}, {self.steps} step" + \
            ("s" if self.steps > 1 else "")

    def encode(self) -> str:
        return f"{self.meta_batch},{self.steps},{int(self.second_order)}"

    @staticmethod
    def decode(text: str) -> Setting:
        b, k, so = text.split(",")
        return Setting(int(b), int(k), bool(int(so)))


def episodes(n: int, seed: int, dtype: torch.dtype, device: str) -> list[Episode]:
    """``n`` random 5-way 1-shot episodes with 15 queries per class, images ``[1, 28, 28]``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(WAYS)
    return [Episode(torch.rand(WAYS * SHOTS, 1, 28, 28, generator=g, dtype=dtype), labels.repeat_interleave(SHOTS),
                    torch.rand(WAYS * QUERIES, 1, 28, 28, generator=g, dtype=dtype),
                    labels.repeat_interleave(QUERIES), ways=WAYS).to(device) for _ in range(n)]


class PeerConv4(nn.Module):
    """The Conv-4 a user of the peers writes (higher's and learn2learn's Omniglot examples): four
    ``3x3 conv (stride 2) -> nn.BatchNorm2d (batch statistics) -> ReLU`` blocks, spatial mean, linear head.
    Parameter names equal :class:`metarl.nets.Conv4`'s, so one state dict initialises both."""

    def __init__(self, ways: int = WAYS, hidden: int = 64) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [nn.Conv2d(1 if i == 0 else hidden, hidden, 3, stride=2, padding=1),
                       nn.BatchNorm2d(hidden, track_running_stats=False), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


MetaGrad = Callable[[list[Episode]], None]
"""Accumulates the meta-gradient of a meta-batch into the ``.grad`` of the network's parameters."""


def higher_meta_grad(net: nn.Module, s: Setting) -> MetaGrad:
    import higher

    inner_opt = torch.optim.SGD(net.parameters(), lr=INNER_LR)

    def run(batch: list[Episode]) -> None:
        for e in batch:
            with higher.innerloop_ctx(net, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=s.second_order) as (fnet, diffopt):
                for _ in range(s.steps):
                    diffopt.step(TF.cross_entropy(fnet(e.support_x), e.support_y))
                loss = TF.cross_entropy(fnet(e.query_x), e.query_y) / len(batch)
                if s.second_order:
                    loss.backward()
                else:
                    # Without higher-order tracking the fast weights are detached leaves: FOMAML adds
                    # the query gradient with respect to them to the initial weights (higher's README).
                    for p, g in zip(net.parameters(), torch.autograd.grad(loss, list(fnet.parameters())),
                                    strict=True):
                        p.grad = g if p.grad is None else p.grad + g

    return run


def torchopt_meta_grad(net: nn.Module, s: Setting) -> MetaGrad:
    import torchopt

    if not s.second_order:
        sgd = torchopt.sgd(lr=INNER_LR)
        names = [k for k, _ in net.named_parameters()]

        def first_order(batch: list[Episode]) -> None:
            theta = tuple(net.parameters())
            for e in batch:
                phi, state = theta, sgd.init(theta)
                for _ in range(s.steps):
                    out = torch.func.functional_call(net, dict(zip(names, phi, strict=True)), (e.support_x,))
                    grads = torch.autograd.grad(TF.cross_entropy(out, e.support_y), phi)  # no graph: FOMAML
                    updates, state = sgd.update(grads, state, params=phi, inplace=False)
                    phi = tuple(torchopt.apply_updates(phi, updates, inplace=False))
                out = torch.func.functional_call(net, dict(zip(names, phi, strict=True)), (e.query_x,))
                (TF.cross_entropy(out, e.query_y) / len(batch)).backward()

        return first_order

    inner_opt = torchopt.MetaSGD(net, lr=INNER_LR)

    def second_order(batch: list[Episode]) -> None:
        net_state = torchopt.extract_state_dict(net, by="reference", detach_buffers=True)
        opt_state = torchopt.extract_state_dict(inner_opt)
        for e in batch:
            for _ in range(s.steps):
                inner_opt.step(TF.cross_entropy(net(e.support_x), e.support_y))
            (TF.cross_entropy(net(e.query_x), e.query_y) / len(batch)).backward()
            torchopt.recover_state_dict(net, net_state)
            torchopt.recover_state_dict(inner_opt, opt_state)

    return second_order


def torch_func_meta_grad(net: nn.Module, s: Setting) -> MetaGrad:
    from torch.func import functional_call, grad

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return TF.cross_entropy(functional_call(net, params, (x,)), y)

    def task_loss(theta: dict[str, torch.Tensor], e: Episode) -> torch.Tensor:
        phi = theta
        for _ in range(s.steps):
            g = grad(loss)(phi, e.support_x, e.support_y)
            phi = {k: phi[k] - INNER_LR * (g[k] if s.second_order else g[k].detach()) for k in phi}
        return loss(phi, e.query_x, e.query_y)

    def run(batch: list[Episode]) -> None:
        theta = {k: v.detach() for k, v in net.named_parameters()}
        for e in batch:
            g = grad(task_loss)(theta, e)
            for k, p in net.named_parameters():
                p.grad = g[k] / len(batch) if p.grad is None else p.grad + g[k] / len(batch)

    return run


def learn2learn_status() -> str | None:
    """``None`` if learn2learn imports, else why it is skipped."""
    try:
        import learn2learn  # noqa: F401
    except Exception as exc:  # ImportError, or an error inside its import (e.g. a missing torchvision)
        return f"not importable ({type(exc).__name__}: {exc}); {LEARN2LEARN_BUILD}"
    return None


def initial_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return PeerConv4().state_dict()


class Implementation:
    """One implementation on one setting: ``step()`` is one meta-iteration, ``meta_gradient()`` its gradient."""

    def __init__(self, name: str, s: Setting, dtype: torch.dtype, device: str, seed: int) -> None:
        self.name, self.setting = name, s
        state = initial_state(seed)
        if name == "metarl":
            self.learner = MamlLearner(MamlConfig(backbone="conv4-stride", meta_batch_size=s.meta_batch,
                                                  inner_steps=s.steps, inner_lr=INNER_LR, outer_lr=OUTER_LR,
                                                  first_order=not s.second_order),
                                       Problem("classification", (1, 28, 28), WAYS), seed=seed, device=device)
            self.net: nn.Module = self.learner.net.to(dtype)
            self.net.load_state_dict(state)
            self.batching = self.learner.batching
            return
        self.net = PeerConv4().to(device=device, dtype=dtype)
        self.net.load_state_dict(state)
        self.batching = "loop"
        builders = {"higher": higher_meta_grad, "torchopt": torchopt_meta_grad, "torch.func": torch_func_meta_grad}
        if name not in builders:
            raise ValueError(f"unknown implementation {name!r}; choose from {IMPLEMENTATIONS}")
        self.meta_grad = builders[name](self.net, s)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=OUTER_LR)

    def step(self, batch: list[Episode]) -> None:
        if self.name == "metarl":
            self.learner.meta_train_step(batch)
            return
        self.optimizer.zero_grad()
        self.meta_grad(batch)
        self.optimizer.step()

    def meta_gradient(self, batch: list[Episode]) -> torch.Tensor:
        """The flat meta-gradient at the initial weights (for the agreement check)."""
        if self.name == "metarl":
            # meta_train_step leaves the meta-gradient in .grad (the Adam step changes only the weights).
            self.learner.meta_train_step(batch)
        else:
            self.meta_grad(batch)
        return torch.cat([p.grad.reshape(-1) for p in self.net.parameters()])  # type: ignore[union-attr]


def agreement(settings: Sequence[Setting], device: str, seed: int,
              implementations: Sequence[str] = IMPLEMENTATIONS) -> list[dict[str, Any]]:
    """Relative error ``||g_impl - g_metarl|| / ||g_metarl||`` of every implementation, float64, meta-batch 2."""
    rows = []
    for s in {Setting(2, x.steps, x.second_order) for x in settings}:
        batch = episodes(2, seed + 1, torch.float64, device)
        grads = {name: Implementation(name, s, torch.float64, device, seed).meta_gradient(batch)
                 for name in ("metarl", *(n for n in implementations if n != "metarl"))}
        ref = grads["metarl"]
        errors = {name: float((g - ref).norm() / ref.norm()) for name, g in grads.items() if name != "metarl"}
        rows.append({"setting": asdict(s), "relative_error_vs_metarl": errors, "tolerance": AGREEMENT_RTOL})
        bad = {k: v for k, v in errors.items() if not v <= AGREEMENT_RTOL}
        if bad:
            raise SystemExit(f"meta-gradients disagree on {s.name} (float64): {bad}, tolerance {AGREEMENT_RTOL}; "
                             "no timing is reported for implementations that compute something else")
        print(f"agreement {s.name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), flush=True)
    return sorted(rows, key=lambda r: (not r["setting"]["second_order"], r["setting"]["steps"]))


def worker(name: str, s: Setting, iters: int, threads: int, device: str, seed: int) -> dict[str, Any]:
    """One implementation in this (fresh) process: warm-up, ``iters`` timed meta-iterations, memory."""
    torch.set_num_threads(threads)
    impl = Implementation(name, s, torch.float32, device, seed)
    batch = episodes(s.meta_batch, seed + 1, torch.float32, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    impl.step(batch)
    sync()
    before = rss_mb()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times, cpu_times = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        impl.step(batch)
        sync()
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    out = {"times_s": times, "cpu_times_s": cpu_times, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb(),
           "batching": impl.batching}
    if device.startswith("cuda"):
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def grid(quick: bool) -> list[Setting]:
    if quick:
        return [Setting(2, 1, True)]
    return [Setting(b, k, so) for so in (True, False) for b in (8, 32) for k in (1, 5)]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small setting, one round (smoke test)")
    parser.add_argument("--out", type=Path, default=None, help="JSON result path")
    parser.add_argument("--rounds", type=int, default=None, help="rounds over the grid (default 3; quick 1)")
    parser.add_argument("--iters", type=int, default=None, help="timed meta-iterations per worker (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in every worker (default 1: the "
                                                                "host is shared)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--settings", nargs="*", default=None, help="subset of the grid as B,K,SECOND_ORDER "
                                                                     "(e.g. 8,1,1)")
    parser.add_argument("--worker", nargs=2, metavar=("IMPL", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    iters = args.iters or (1 if args.quick else 2)
    for name, value in (("rounds", rounds), ("iters", iters), ("threads", args.threads)):
        if value < 1:
            parser.error(f"--{name} must be >= 1, got {value}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device} requested but CUDA is not available here; use --device cpu")
    if args.worker:
        print(json.dumps(worker(args.worker[0], Setting.decode(args.worker[1]), iters, args.threads, args.device,
                                args.seed)))
        return {}

    wall = time.perf_counter()
    load_before = load_average()
    settings = [Setting.decode(x) for x in args.settings] if args.settings else grid(args.quick)
    checks = agreement(settings, args.device, args.seed)
    l2l = learn2learn_status()
    impls = list(IMPLEMENTATIONS)
    raw: dict[tuple[Setting, str], list[dict[str, Any]]] = {(s, n): [] for s in settings for n in impls}
    script = Path(__file__).resolve()
    for r in range(rounds):
        for s in settings:
            order = impls[r % len(impls):] + impls[:r % len(impls)]
            for name in order:
                if args.quick:  # seconds, not minutes: no fresh interpreter per worker (memory not isolated)
                    res = worker(name, s, iters, args.threads, args.device, args.seed)
                else:
                    res = run_worker(script, [name, s.encode(), "--iters", str(iters), "--threads",
                                              str(args.threads), "--device", args.device, "--seed", str(args.seed)])
                raw[(s, name)].append(res)
                print(f"round {r + 1}/{rounds} {s.name:38s} {name:11s} "
                      f"{statistics_line(res['times_s'])} peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)
    rows = [summarise(s, impls, raw) for s in settings]
    payload = {
        "benchmark": "speed_maml",
        "quick": args.quick,
        "device": args.device,
        "threads": args.threads,
        "workload": {"network": "Conv-4, stride-2 convolutions, 64 channels, batch-statistics BatchNorm, spatial "
                                "mean, linear head (MAML paper's Omniglot network)",
                     "images": "random 1x28x28", "ways": WAYS, "shots": SHOTS, "queries_per_class": QUERIES,
                     "inner_lr": INNER_LR, "outer": f"Adam {OUTER_LR}",
                     "meta_iteration": "zero_grad + meta-gradient + Adam step"},
        "protocol": {"rounds": rounds, "timed_iterations_per_worker": iters, "warmup_iterations": 1,
                     "process": "one fresh process per (setting, implementation) and round; implementations "
                                "interleaved in a rotating order" if not args.quick else
                                "--quick: all workers in this process (peak memory is not per implementation)",
                     "ratio": "peer seconds / metarl seconds, per round (medians of the worker's timed "
                              "iterations), then median/min/max over rounds",
                     "cpu_ratio": "the same on the process's CPU time (time.process_time), less sensitive to "
                                  "other jobs on a shared host"},
        "peers": {"higher": "0.2.1, innerloop_ctx per task", "torchopt": "0.7.3, MetaSGD + extract/recover_state_dict "
                  "(second order), functional sgd (first order)", "torch.func": "grad of functional_call, loop "
                  "over tasks", "learn2learn": {"status": "skipped" if l2l else "available", "reason": l2l}},
        "agreement": checks,
        "target": "metarl meta-iteration >= 2x faster than the fastest peer on CPU (>= 5x on GPU); peak memory no "
                  "higher than the peer's",
        "load_average": {"before": load_before, "after": load_average()},
        "rows": rows,
    }
    out = args.out or (Path(tempfile.mkdtemp()) / "speed_maml.json" if args.quick else OUT)
    write_and_print(out, payload, time.perf_counter() - wall, readme_table)
    return payload


def statistics_line(times: Sequence[float]) -> str:
    s = summary(times)
    return f"{s['median']:.3f} s [{s['min']:.3f}, {s['max']:.3f}]"


def summarise(s: Setting, impls: Sequence[str], raw: dict[tuple[Setting, str], list[dict[str, Any]]]
              ) -> dict[str, Any]:
    per_round = {n: [summary(r["times_s"])["median"] for r in raw[(s, n)]] for n in impls}
    cpu_round = {n: [summary(r["cpu_times_s"])["median"] for r in raw[(s, n)]] for n in impls}
    result: dict[str, Any] = {"setting": asdict(s), "name": s.name, "implementations": {}}
    for n in impls:
        runs = raw[(s, n)]
        result["implementations"][n] = {
            "seconds": summary([t for r in runs for t in r["times_s"]]),
            "cpu_seconds": summary([t for r in runs for t in r["cpu_times_s"]]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "workload_rss_mb": max(r["peak_rss_mb"] - r["rss_before_mb"] for r in runs),
            "batching": runs[0]["batching"],
            **({"peak_cuda_mb": max(r["peak_cuda_mb"] for r in runs)} if "peak_cuda_mb" in runs[0] else {}),
        }
        if n != "metarl":
            result["implementations"][n]["ratio_vs_metarl"] = paired_ratios(per_round[n], per_round["metarl"])
            result["implementations"][n]["cpu_ratio_vs_metarl"] = paired_ratios(cpu_round[n], cpu_round["metarl"])
    peers = [n for n in impls if n in PEERS]
    fastest = min(peers, key=lambda n: result["implementations"][n]["seconds"]["median"])
    m = result["implementations"]["metarl"]
    result["fastest_peer"] = fastest
    result["speedup_vs_fastest_peer"] = result["implementations"][fastest]["ratio_vs_metarl"]
    result["memory_vs_fastest_peer"] = m["peak_rss_mb"] / result["implementations"][fastest]["peak_rss_mb"]
    result["meets_target"] = bool(result["speedup_vs_fastest_peer"]["median"] >= 2.0
                                  and result["memory_vs_fastest_peer"] <= 1.0)
    return result


def readme_table(d: dict[str, Any]) -> str:
    """The README's table of this benchmark: seconds per meta-iteration, ratios, peak memory."""
    peers = [p for p in PEERS if p in d["rows"][0]["implementations"]]
    lines = ["### MAML meta-iteration, metarl vs peers (Conv-4, 5-way 1-shot, 15 queries/class; seconds, median "
             "[min, max]; ratio = peer / metarl)", "",
             f"`python benchmarks/speed/maml_meta_iteration.py` ({machine_line(d)})", "",
             "| setting | metarl | " + " | ".join(peers) + " | speed-up vs fastest peer | same, CPU time | peak RSS "
             "metarl / fastest peer |", "| --- |" + " ---: |" * (len(peers) + 4)]
    for r in d["rows"]:
        im = r["implementations"]
        cells = [f"{im[p]['seconds']['median']:.2f} ({im[p]['ratio_vs_metarl']['median']:.2f}x)" for p in peers]
        f = im[r["fastest_peer"]]
        lines.append(f"| {r['name']} | {fmt_spread(im['metarl']['seconds'])} | " + " | ".join(cells) +
                     f" | {fmt_spread(r['speedup_vs_fastest_peer'], unit='x')} ({r['fastest_peer']}) | "
                     f"{fmt_spread(f['cpu_ratio_vs_metarl'], unit='x')} | "
                     f"{im['metarl']['peak_rss_mb']:.0f} / {f['peak_rss_mb']:.0f} MB |")
    l2l = d["peers"]["learn2learn"]
    if l2l["status"] != "available":
        lines += ["", f"learn2learn: skipped, {l2l['reason']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
