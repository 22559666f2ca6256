"""Scalar logging to ``progress.csv`` and TensorBoard, hyperparameters to ``config.json``.

Usage (STYLE.md habit 7: algorithms return metrics, the loop logs them)::

    logger = Logger("runs/nav")
    logger.log_hparams({"algo": "maml-rl", "lr": 0.1})
    for it in range(1, n + 1):
        for key, value in learner.meta_train_step(tasks).items():  # e.g. "train/loss"
            logger.record(key, value)
        logger.dump(step=it)
    logger.close()

Keys are namespaced, ``meta/post_adapt_return``, ``train/loss``, ``rollout/return_mean``,
``time/steps_per_s``; TensorBoard groups them by the part before the slash.

CSV columns. The first column is ``step``; the others appear in order of first appearance (new keys
of one dump sorted by name). Keys may appear later in a run (evaluation metrics arrive only every
``eval_every`` iterations), so when a dump brings a new key the file is rewritten once with the wider
header (atomically, through a temporary file and ``os.replace``), earlier rows getting empty cells.
A key missing from a dump leaves an empty cell. This keeps every metric, at the cost of a rewrite
per new key, which happens a handful of times per run.

Resuming. ``Logger(run_dir, resume_step=k)`` keeps the rows with ``step <= k`` (dropping a half-written
last line) and only the columns those rows use, and tells TensorBoard to hide events after step
``k`` (``SummaryWriter(purge_step=k + 1)``), so a run resumed from the checkpoint of step ``k`` ends with
the same CSV as an uninterrupted run. Without ``resume_step`` a new log starts and an existing
``progress.csv`` is replaced (with a warning).
"""

from __future__ import annotations

import csv
import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["CSV_NAME", "CONFIG_NAME", "Logger", "read_progress"]

CSV_NAME = "progress.csv"
CONFIG_NAME = "config.json"
_STEP = "step"


def _format(value: float) -> str:
    # repr of a float is the shortest string that reads back to the same float
    return repr(float(value))


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` default: paths, numpy and torch scalars, dataclasses, tasks, sets, dtypes."""
    import dataclasses

    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "to_dict") and callable(obj.to_dict):  # metarl Task
        return obj.to_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:  # numpy/torch 0-d
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # small numpy arrays / tensors
        return obj.tolist()
    if type(obj).__module__ == "torch" and type(obj).__name__ in ("device", "dtype"):
        return str(obj)
    raise TypeError(f"hyperparameter value {obj!r} of type {type(obj).__name__} is not JSON-serialisable; "
                    "pass plain numbers, strings, lists or dicts (e.g. str(value))")


def _read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV, dropping a last line that was cut short by a crash."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    if not text:
        return [], []
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]  # a partially written last row
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    rows = [row for row in reader if None not in row and all(v is not None for v in row.values())]
    return header, rows


class Logger:
    """Record scalars by key, write them once per :meth:`dump` to CSV and TensorBoard.

    Args:
        run_dir: the run folder (created if needed); files: ``progress.csv``, ``config.json`` and the
            TensorBoard event files (directly in ``run_dir``, so ``tensorboard --logdir runs`` shows one
            run per folder).
        use_tensorboard: write TensorBoard scalars (needs the ``tensorboard`` package).
        csv: write ``progress.csv``.
        resume_step: continue the log of an interrupted run from step ``k``: rows with ``step > k`` are
            dropped (see the module docstring).
    """

    def __init__(self, run_dir: str | os.PathLike[str], use_tensorboard: bool = True, csv: bool = True,
                 resume_step: int | None = None) -> None:
        if resume_step is not None and (isinstance(resume_step, bool) or not isinstance(resume_step, int)
                                        or resume_step < 0):
            raise ValueError(f"resume_step must be an int >= 0 or None, got {resume_step!r}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / CSV_NAME if csv else None
        self._pending: dict[str, float] = {}
        self._columns: list[str] = [_STEP]
        self._last_step: int | None = resume_step
        self._hparams_written = False
        self._closed = False
        self._csv_file: io.TextIOWrapper | None = None
        if self.csv_path is not None:
            self._start_csv(resume_step)
        self._writer: Any = None
        if use_tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError(
                    f"TensorBoard logging needs the `tensorboard` package ({e}); `pip install tensorboard` "
                    "or create the Logger with use_tensorboard=False"
                ) from e
            purge = resume_step + 1 if resume_step is not None else None
            self._writer = SummaryWriter(log_dir=str(self.run_dir), purge_step=purge)

    # ---------------------------------------------------------------------------------------------
    # CSV

    def _start_csv(self, resume_step: int | None) -> None:
        assert self.csv_path is not None
        exists = self.csv_path.exists() and self.csv_path.stat().st_size > 0
        if resume_step is None:
            if exists:
                warnings.warn(
                    f"{self.csv_path} already holds a log; it is replaced by this new run's log "
                    "(pass resume_step=k to continue it instead)",
                    stacklevel=3,
                )
                self.csv_path.unlink()
            return
        if not exists:
            return
        header, rows = _read_rows(self.csv_path)
        if header[:1] != [_STEP]:
            raise ValueError(f"{self.csv_path} is not a metarl progress log (first column {header[:1]}, "
                             f"expected ['{_STEP}']); move it away or start a new run folder")
        kept = [r for r in rows if _parse_step(r[_STEP], self.csv_path) <= resume_step]
        # keep only columns the kept rows use, so keys first seen after step k are re-added in the
        # same order an uninterrupted run would have added them
        self._columns = [c for c in header if c == _STEP or any(r.get(c, "") != "" for r in kept)]
        self._rewrite(kept)

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        """Replace the CSV (header + rows) atomically, then reopen it for appending."""
        assert self.csv_path is not None
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        tmp = self.csv_path.with_name(f".{self.csv_path.name}.tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._columns, restval="", extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.csv_path)

    def _append(self, row: dict[str, str]) -> None:
        assert self.csv_path is not None
        if self._csv_file is None:
            self._csv_file = open(self.csv_path, "a", encoding="utf-8", newline="")
        csv.DictWriter(self._csv_file, fieldnames=self._columns, restval="", lineterminator="\n").writerow(row)
        self._csv_file.flush()

    def _write_csv(self, step: int, values: Mapping[str, float]) -> None:
        assert self.csv_path is not None
        new = sorted(k for k in values if k not in self._columns)
        if new or not self.csv_path.exists():
            rows = _read_rows(self.csv_path)[1] if self.csv_path.exists() else []
            self._columns = self._columns + new
            self._rewrite(rows)
        self._append({_STEP: str(step), **{k: _format(v) for k, v in values.items()}})

    # ---------------------------------------------------------------------------------------------
    # public API

    def record(self, key: str, value: float) -> None:
        """Set ``key`` (e.g. ``"train/loss"``) for the next :meth:`dump`; a second record of the same
        key before the dump replaces the first. ``value``: a number, numpy scalar or 1-element tensor."""
        self._check_open()
        if not isinstance(key, str) or not key or key == _STEP:
            raise ValueError(f"key must be a non-empty str other than {_STEP!r}, got {key!r}")
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"value of {key!r} must be a number (or a 1-element tensor), got {value!r}") from None
        self._pending[key] = number

    def dump(self, step: int) -> dict[str, float]:
        """Write the recorded values as one row at ``step`` and clear them; return what was written.

        A dump with nothing recorded writes nothing. Steps should increase; a step not after the last
        one is written but warned about (it would confuse resume truncation)."""
        self._check_open()
        if isinstance(step, bool) or not isinstance(step, int):
            raise TypeError(f"step must be an int, got {step!r}")
        values, self._pending = self._pending, {}
        if not values:
            return {}
        if self._last_step is not None and step <= self._last_step:
            warnings.warn(f"Logger.dump(step={step}) after step {self._last_step}: steps should increase",
                          stacklevel=2)
        self._last_step = step
        if self.csv_path is not None:
            self._write_csv(step, values)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, global_step=step)
        return dict(values)

    def log_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Write ``config.json`` (once per logger) and the same JSON as text to TensorBoard."""
        self._check_open()
        if self._hparams_written:
            raise RuntimeError(f"hyperparameters were already written to {self.run_dir / CONFIG_NAME}; "
                               "log_hparams is called once per run")
        if not isinstance(hparams, Mapping):
            raise TypeError(f"hparams must be a dict, got {type(hparams).__name__}")
        text = json.dumps(dict(hparams), indent=2, sort_keys=True, default=_jsonable, allow_nan=True)
        path = self.run_dir / CONFIG_NAME
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, path)
        self._hparams_written = True
        if self._writer is not None:
            # four-space indentation makes TensorBoard's markdown show the JSON as a code block
            self._writer.add_text("hparams", "\n".join("    " + line for line in text.splitlines()), global_step=0)

    def flush(self) -> None:
        if self._csv_file is not None:
            self._csv_file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the files; further calls are no-ops. Values recorded but not dumped are dropped."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            warnings.warn(f"Logger closed with {len(self._pending)} recorded value(s) never dumped: "
                          f"{sorted(self._pending)}", stacklevel=2)
        if self._csv_file is not None:
            self._csv_file.close()
            self._csv_file = None
        if self._writer is not None:
            self._writer.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"the Logger of {self.run_dir} is closed; create a new one")

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_progress(run_dir: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows of a run's ``progress.csv`` as numbers, one dict per logged step (``"step"`` included;
    metrics not logged at that step are left out). A missing log gives no rows."""
    path = Path(run_dir) / CSV_NAME
    if not path.exists():
        return []
    _, rows = _read_rows(path)
    return [{k: _parse_step(v, path) if k == _STEP else float(v) for k, v in row.items() if v != ""} for row in rows]


def _parse_step(text: str, path: Path) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{path}: step column holds {text!r}, not a number; the file is damaged") from None
