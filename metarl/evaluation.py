"""The single fast-adaptation evaluation shared by every RL learner.

For held-out tasks it reports the adaptation curve: mean return at every adaptation stage (after
0, 1, ..., k gradient steps for MAML-style learners; episode 1, 2, ... of a trial for memory-based
ones) with a 95% confidence interval over tasks, for the learner and for the baselines a reader
expects next to it. Every learner sees the *same* tasks and the same env seeds. Output: a JSON
file, a PNG plot, and a printed table.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from metarl.learner import AdaptationResult
from metarl.stats import mean_ci95
from metarl.types import Task


class AdaptsMany(Protocol):
    def adapt_many(self, tasks: Sequence[Task], budget: int, seed: int,
                   episodes_per_step: int | None = None) -> AdaptationResult: ...


@dataclass(frozen=True)
class Curve:
    """Per-stage statistics of one learner over tasks. ``per_task`` is ``[n_tasks, n_stages]``;
    ``stage_unit`` is the learner's :attr:`~metarl.learner.AdaptationResult.stage_unit`."""

    name: str
    per_task: np.ndarray
    stage_unit: str = "steps"

    @property
    def stats(self) -> list[dict[str, float | int]]:
        return [mean_ci95(self.per_task[:, k]).to_dict() for k in range(self.per_task.shape[1])]

    def to_dict(self) -> dict[str, Any]:
        s = self.stats
        return {"mean": [x["mean"] for x in s], "ci95": [x["ci95"] for x in s],
                "per_task": self.per_task.tolist(), "stage_unit": self.stage_unit}


def stage_name(k: int, unit: str) -> str:
    """Column title of stage ``k``: ``"2 steps"`` (after 2 gradient steps) or ``"episode 3"`` (of a trial)."""
    return f"episode {k + 1}" if unit == "episodes" else f"{k} {unit}"


def _unit(curves: Mapping[str, Curve]) -> str:
    """The first learner's (the one evaluated; baselines follow it) stage unit."""
    return next(iter(curves.values())).stage_unit if curves else "steps"


def evaluate_adaptation(learners: Mapping[str, AdaptsMany], tasks: Sequence[Task], budget: int,
                        episodes_per_step: int, seed: int) -> dict[str, Curve]:
    """Adapt every learner to the same ``tasks`` (same env seeds) and collect its curve."""
    if not tasks:
        raise ValueError("evaluation needs at least one task")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if episodes_per_step < 1:
        raise ValueError(f"episodes_per_step must be >= 1, got {episodes_per_step}")
    curves = {}
    for name, learner in learners.items():
        result = learner.adapt_many(tasks, budget, seed=seed, episodes_per_step=episodes_per_step)
        curves[name] = Curve(name, np.asarray(result.stage_returns, dtype=np.float64), result.stage_unit)
    return curves


def format_table(curves: Mapping[str, Curve], stage_label: str | None = None) -> str:
    """A markdown table: one row per learner, one column per stage, ``mean ± ci95``.

    ``stage_label``: ``"steps"``, ``"episodes"`` (columns "episode 1", "episode 2", ...) or None for the
    first curve's unit.
    """
    n_stages = max(c.per_task.shape[1] for c in curves.values())
    unit = stage_label or _unit(curves)
    header = "| learner | " + " | ".join(stage_name(k, unit) for k in range(n_stages)) + " |"
    lines = [header, "|" + " --- |" * (n_stages + 1)]
    for name, c in curves.items():
        cells = [f"{s['mean']:.2f} ± {s['ci95']:.2f}" for s in c.stats]
        cells += [""] * (n_stages - len(cells))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curves(curves: Mapping[str, Curve], path: str | Path, title: str, stage_label: str | None = None,
                references: Mapping[str, Sequence[float]] | None = None) -> Path:
    """Mean with a 95% CI band per learner; optional reference curves (e.g. a paper's) dashed.

    ``stage_label`` is the x-axis title (None: from the first curve's unit).
    """
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, c in curves.items():
        s = c.stats
        x = np.arange(len(s))
        mean = np.array([v["mean"] for v in s])
        ci = np.nan_to_num(np.array([v["ci95"] for v in s]))
        ax.plot(x, mean, marker="o", label=name)
        ax.fill_between(x, mean - ci, mean + ci, alpha=0.2)
    for name, values in (references or {}).items():
        ax.plot(np.arange(len(values)), values, linestyle="--", marker="x", label=name)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if stage_label is None:
        stage_label = "episode within the trial (0 = first)" if _unit(curves) == "episodes" else "adaptation steps"
    ax.set_xlabel(stage_label)
    ax.set_ylabel("mean return (95% CI over tasks)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(curves: Mapping[str, Curve], out_dir: str | Path, setup: dict[str, Any],
                 title: str, stem: str = "evaluation") -> tuple[Path, Path, str]:
    """Write ``<stem>.json`` and ``<stem>.png`` into ``out_dir``; return their paths and the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(curves)
    payload = {"setup": setup, "curves": {n: c.to_dict() for n, c in curves.items()}, "table": table}
    json_path = out / f"{stem}.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, json_path)
    png_path = plot_curves(curves, out / f"{stem}.png", title)
    return json_path, png_path, table
