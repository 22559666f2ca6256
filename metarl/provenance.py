"""Where a number came from: machine, software versions, commit, wall time.

Every benchmark writes its results with :func:`write_results`, which adds this record, so a
number in the README can be traced to the machine and the commit that produced it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any


def git_commit(cwd: str | Path | None = None) -> str:
    """The current commit hash, or ``unknown``; ``-dirty`` if the work tree differs from it: changed tracked
    files or new files git does not ignore (a new, uncommitted script is code the commit does not hold)."""
    cwd = Path(cwd) if cwd is not None else Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=normal"], cwd=cwd,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# The code that runs is the code Python loaded: the checkout's commit when metarl.provenance is first
# imported (a benchmark imports it at start). A long run whose checkout moves on meanwhile still names it.
STARTUP_COMMIT = git_commit()


def machine_info() -> dict[str, Any]:
    """CPU, core count, Python/torch/gymnasium/numpy versions and the CUDA device if any."""
    import gymnasium
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gymnasium": gymnasium.__version__,
        "numpy": numpy.__version__,
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def code_commit() -> dict[str, str]:
    """``commit`` (:data:`STARTUP_COMMIT`, the code this process runs), ``date_utc`` now, and ``commit_at_write``
    (the checkout's commit now) only if the checkout moved on since start-up."""
    record = {"commit": STARTUP_COMMIT, "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    now = git_commit()
    if now != STARTUP_COMMIT:
        record["commit_at_write"] = now
    return record


def write_results(path: str | Path, payload: dict[str, Any], wall_time_s: float | None = None) -> Path:
    """Write ``payload`` plus provenance (machine, commit, date, wall time) as pretty JSON, atomically.

    The commit is that of the metarl code that ran (the checkout holding this package, as it was when
    the process imported this module: :data:`STARTUP_COMMIT`), wherever the file goes: a result written
    to a temporary folder still names the code that produced it, and one whose checkout moved on while
    it ran says so in ``commit_at_write``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    provenance: dict[str, Any] = {"machine": machine_info(), **code_commit(), "wall_time_s": wall_time_s}
    record = {**payload, "provenance": provenance}
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path
