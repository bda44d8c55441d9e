"""The run folder: the only thing analysis reads, so runs made anywhere compare the same way.

```
RUN_DIR/
  config.yaml        the resolved configuration
  metrics.csv        one row per finished training episode: step, episode, return, length, agent metrics
  eval.csv           one row per greedy evaluation: step, mean/std/min/max return, episodes
  status.json        {"status": "running" | "complete", "step": ..., "total_steps": ...}
  tb/                TensorBoard events
  checkpoints/       latest.pt (written atomically: temp file + fsync + rename)
```
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml

from gbmr.core.errors import GbmrError

EVAL_COLUMNS = ("step", "mean_return", "std_return", "min_return", "max_return", "episodes")
EPISODE_COLUMNS = ("step", "episode", "return", "length")
LEARNER_COLUMNS = ("step", "updates")  # + the agent's metric names: means over the updates since the last row


class RunDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.csv"
        self.eval = self.path / "eval.csv"
        self.learner = self.path / "learner.csv"
        self.status = self.path / "status.json"
        self.tensorboard = self.path / "tb"
        self.checkpoints = self.path / "checkpoints"
        self.latest = self.checkpoints / "latest.pt"

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        """Open a run folder, failing clearly when it is missing or not a run."""
        run = cls(path)
        if not run.path.is_dir():
            raise GbmrError(f"run folder '{path}' does not exist")
        if not run.config.is_file():
            raise GbmrError(f"'{path}' is not a run folder (no config.yaml); pass a folder made by `gbmr train`")
        return run

    def create(self) -> None:
        if self.config.exists():
            raise GbmrError(f"run folder '{self.path}' already holds a run; continue it with --resume {self.path}")
        self.checkpoints.mkdir(parents=True, exist_ok=True)

    def read_config(self) -> dict[str, Any]:
        data = yaml.safe_load(self.config.read_text())
        if not isinstance(data, dict) or "algo" not in data or "env" not in data:
            raise GbmrError(f"'{self.config}' is not a gbmr run config (needs 'algo' and 'env')")
        return data

    def read_status(self) -> dict[str, Any]:
        """status.json's contents, or {} when it is missing or unreadable (a run killed before writing it)."""
        try:
            status = json.loads(self.status.read_text())
        except (OSError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

    def write_status(self, status: str, step: int, total_steps: int) -> None:
        atomic_write_text(self.status, json.dumps({"status": status, "step": step, "total_steps": total_steps}))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(state, self.latest)

    def load_checkpoint(self) -> dict[str, Any]:
        if not self.latest.is_file():
            raise GbmrError(f"run folder '{self.path}' has no checkpoint yet (checkpoints/latest.pt)")
        return torch.load(self.latest, map_location="cpu", weights_only=True)


class CsvLog:
    """Append-only CSV with a fixed header, flushed per row; truncated back to a row count on resume."""

    def __init__(self, path: Path, columns: tuple[str, ...], resume_rows: int | None = None) -> None:
        self.path = path
        self.columns = columns
        if resume_rows is None:
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(columns)
            self.rows = 0
        else:
            self._truncate(resume_rows)
            self.rows = resume_rows
        self._file = open(path, "a", newline="")  # noqa: SIM115 - kept open for the whole run
        self._writer = csv.writer(self._file)

    def _truncate(self, rows: int) -> None:
        with open(self.path, newline="") as f:
            lines = f.readlines()[: rows + 1]
        header = next(csv.reader(lines[:1]), [])
        if tuple(header) != self.columns:  # rows written now would land under the wrong names
            added = [c for c in self.columns if c not in header]
            dropped = [c for c in header if c not in self.columns]
            raise GbmrError(f"'{self.path}' has other columns than this version of gbmr writes (new: {added or 'none'}"
                            f", gone: {dropped or 'none'}); resume it with the gbmr version that started it")
        atomic_write_text(self.path, "".join(lines))

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow([_fmt(row.get(c)) for c in self.columns])
        self._file.flush()
        self.rows += 1

    def close(self) -> None:
        self._file.close()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.8g}"
    return str(value)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file, fsync, rename: a crash leaves the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
