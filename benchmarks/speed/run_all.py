"""The whole speed suite of issue 6 in one command: every benchmark in turn, each in its own interpreter.

    python benchmarks/speed/run_all.py            # full suite, writes benchmarks/results/speed*.json (~1 h on 2 cores)
    python benchmarks/speed/run_all.py --quick    # smoke run of every script, results in a temporary folder
    python benchmarks/speed/run_all.py --only maml protonet

Parts (``--only`` names):

- ``maml``: ``maml_meta_iteration.py``, metarl vs higher / torchopt / torch.func -> ``speed_maml.json``
- ``protonet``: ``protonet_episode.py``, metarl vs plain torch -> ``speed_protonet.json``
- ``rollout``: ``rollout_collection.py``, metarl vs Stable-Baselines3 PPO collection -> ``speed_rollout.json``
- ``env``: ``benchmarks/env_throughput.py``, batched twins vs ``SyncVectorEnv`` -> ``speed_env.json``
- ``memory``: ``memory_core.py``, MANN's memory step eager vs ``torch.compile``, and RL²'s GRU
  -> ``speed_memory_core.json``
- ``end_to_end``: ``end_to_end.py``, wall-clock to targets read from committed training logs (no training)
  -> ``speed_end_to_end.json``

The parts run one after the other (never two timed jobs at once on a shared host), one torch thread each
(``OMP_NUM_THREADS=1``). The peers come from ``benchmarks/speed/requirements.txt``; a part whose peer is
missing fails with the import error rather than reporting metarl alone.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results"
PARTS = {
    "maml": (HERE / "maml_meta_iteration.py", "speed_maml.json"),
    "protonet": (HERE / "protonet_episode.py", "speed_protonet.json"),
    "rollout": (HERE / "rollout_collection.py", "speed_rollout.json"),
    "env": (HERE.parent / "env_throughput.py", "speed_env.json"),
    "memory": (HERE / "memory_core.py", "speed_memory_core.json"),
    "end_to_end": (HERE / "end_to_end.py", "speed_end_to_end.json"),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every script's --quick, results in a temporary folder")
    parser.add_argument("--only", nargs="+", choices=sorted(PARTS), default=None, help="run only these parts")
    parser.add_argument("--out-dir", type=Path, default=None,
                        help="folder of the JSON results (default benchmarks/results; quick: a temporary folder)")
    args = parser.parse_args(argv)
    out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="metarl-speed-")) if args.quick else RESULTS)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    failed = []
    for name in args.only or list(PARTS):
        script, filename = PARTS[name]
        cmd = [sys.executable, str(script), "--out", str(out_dir / filename), *(["--quick"] if args.quick else [])]
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, env=env).returncode
        print(f"== {name}: exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(name)
    print(f"results in {out_dir}" + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
