"""What every speed benchmark shares: repeat summaries, paired ratios, peak memory, host load, subprocess workers.

A shared 2-core host is noisy, so every comparison follows one protocol: the implementations of one
comparison run in the same process tree, *interleaved* round by round (drift hits all of them), each
measurement is repeated, and numbers are reported as median / min / max. A ratio ``peer / metarl`` is
computed per round (both timed back to back) and summarised the same way. The load average
(``os.getloadavg``) is recorded before and after, so a reader can tell a quiet run from a busy one.

Peak memory is the peak resident set size of a fresh process that runs one implementation only (``VmHWM``
of ``/proc/self/status``: ``ru_maxrss`` would not do, Linux carries it over from the parent across fork and
exec), next to its RSS just before the first timed call: the difference is what the workload itself needed
on top of the interpreter, torch and the library. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
sys.path.insert(0, str(HERE.parent))
from adaptation_common import machine_line as _machine_line  # noqa: E402


def summary(values: Sequence[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "runs"}`` of repeated measurements."""
    if not values:
        raise ValueError("summary needs at least one measurement")
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": list(values)}


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    """Summary of ``numerator[i] / denominator[i]`` (measurements taken back to back in round ``i``)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired ratios need as many numerators as denominators, got {len(numerator)} and "
                         f"{len(denominator)}")
    return summary([a / b for a, b in zip(numerator, denominator, strict=True)])


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages of the host."""
    return [round(x, 2) for x in os.getloadavg()]


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """Current resident set size of this process, in MB."""
    now = _status_mb("VmRSS")
    return now if now is not None else peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (``VmHWM``; ``ru_maxrss`` where /proc is missing)."""
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_worker(script: Path, args: Sequence[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``script --worker ARGS`` in a fresh interpreter; it prints one JSON object as its last stdout line."""
    proc = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONHASHSEED": "0"})
    if proc.returncode != 0:
        raise RuntimeError(f"worker {script.name} {' '.join(args)} failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"worker {script.name} {' '.join(args)} printed nothing; stderr:\n{proc.stderr[-3000:]}")
    return dict(json.loads(lines[-1]))


def write_and_print(out: Path, payload: dict[str, Any], wall_time_s: float,
                    table: Callable[[dict[str, Any]], str]) -> None:
    """Write a results file (with provenance), print its README table and where it went."""
    from metarl.provenance import write_results

    write_results(out, payload, wall_time_s=wall_time_s)
    print(table(json.loads(out.read_text())))
    print(f"wrote {out}")


def machine_line(d: dict[str, Any]) -> str:
    """:func:`adaptation_common.machine_line` plus the torch threads and the host's load before the run."""
    load = d.get("load_average", {}).get("before")
    threads = d.get("threads")
    extras = ([f"{threads} thread{'s' if threads != 1 else ''}"] if threads else []) + \
        ([f"load {load[0]:.1f}"] if load else [])
    return _machine_line(d, extras)


def fmt_rate(x: float) -> str:
    """Steps or episodes per second, compact: ``12.3M``, ``456k``, ``7.8k``, ``45.6``, ``0.72``."""
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.0f}k"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def fmt_spread(s: dict[str, Any], digits: int = 2, unit: str = "") -> str:
    """``median [min, max]`` of a :func:`summary`."""
    return f"{s['median']:.{digits}f}{unit} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"
