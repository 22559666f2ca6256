from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch

# Small networks run fastest single-threaded, and the suite shares 2 cores (see TrainConfig.threads).
torch.set_num_threads(1)

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _import_benchmark(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """``benchmark_script(name)`` imports ``benchmarks/<name>.py`` as a module (the folder is on ``sys.path`` only
    while importing, so the scripts' imports of one another resolve)."""
    return _import_benchmark
