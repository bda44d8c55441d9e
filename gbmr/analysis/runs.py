"""Find and load `gbmr train` run folders into plain arrays, and read scores and curves off them.

Analysis reads only run folders (config.yaml, metrics.csv, eval.csv, status.json), so runs made on a laptop or
a cluster compare the same way. Everything here is per run; statistics across runs live in stats.py.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from gbmr.core.errors import GbmrError

# Config keys that say where/how a run was recorded, not what was learned: never a "variant".
BOOKKEEPING_KEYS = frozenset(
    {"seed", "env", "algo", "device", "total_steps", "eval_every", "eval_episodes", "checkpoint_every"}
)
TRAIN_WINDOW = 0.10  # train metric: mean return of the episodes in the last 10% of steps before the budget
RETURN = "return"  # the default column: metrics.csv's `return`, eval.csv's `mean_return`


@dataclass
class Run:
    """One run folder: identity, status and the two logged series of one column (the episode return unless
    another was chosen, e.g. SMAX's `won`) as numpy arrays sorted by step."""

    path: Path
    config: dict
    config_text: str
    algo: str
    env: str
    seed: int
    status: str  # "complete", "running", or "unknown" (no status.json)
    train_steps: np.ndarray
    train_values: np.ndarray
    eval_steps: np.ndarray
    eval_values: np.ndarray
    column: str = RETURN
    variant: str = ""  # set by assign_variants: "lr=0.001" when runs of the same algo differ in config
    variant_values: dict = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        """The last env step this run logged anything at (an in-progress run is used up to here)."""
        ends = [a[-1] for a in (self.train_steps, self.eval_steps) if len(a)]
        return int(max(ends)) if ends else 0

    @property
    def in_progress(self) -> bool:
        return self.status != "complete"

    @property
    def method(self) -> str:
        """What the score table compares: the algorithm, plus its variant when it has several."""
        return f"{self.algo} ({self.variant})" if self.variant else self.algo


def _is_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


def _runs_below(folder: Path) -> list[Path]:
    """Every folder under `folder` holding a config.yaml; a run's own subfolders are not searched."""
    found = []
    for root, dirs, files in os.walk(folder):
        if "config.yaml" in files:
            found.append(Path(root))
            dirs.clear()
        else:
            dirs.sort()
    return found


def find_run_dirs(patterns: Sequence[str]) -> list[Path]:
    """Resolve run folders, globs and folders of runs (searched recursively) to distinct run folders."""
    if not patterns:
        raise GbmrError("no run folders given")
    runs: dict[Path, None] = {}
    for pattern in patterns:
        if _is_glob(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                raise GbmrError(f"no files match '{pattern}'")
        else:
            if not os.path.exists(pattern):
                raise GbmrError(f"no such run folder '{pattern}'")
            matches = [pattern]
        for match in matches:
            path = Path(match)
            if path.is_file() and path.name == "config.yaml":
                path = path.parent
            if not path.is_dir():
                raise GbmrError(f"'{match}' is not a run folder (expected a folder with config.yaml)")
            below = _runs_below(path)
            if not below:
                raise GbmrError(f"'{match}' is not a run folder: no config.yaml in it or in any folder "
                                "below it")
            runs.update(dict.fromkeys(p.resolve() for p in below))
    return list(runs)


def _read_series(path: Path, step_col: str, value_col: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) from a run's CSV, sorted by step; an empty or header-only file gives empty arrays."""
    try:
        frame = pd.read_csv(path, usecols=[step_col, value_col])
    except pd.errors.EmptyDataError:
        return np.empty(0, np.int64), np.empty(0)
    except ValueError as err:  # missing column
        raise GbmrError(f"{path} lacks a '{step_col}' or '{value_col}' column: {err}") from None
    frame = frame.dropna().sort_values(step_col, kind="stable")
    return frame[step_col].to_numpy(np.int64), frame[value_col].to_numpy(np.float64)


def _header(path: Path) -> list[str]:
    with path.open() as f:
        return f.readline().strip().split(",")


def run_columns(path: Path) -> set[str]:
    """The columns a run can be scored by: `return` and every column metrics.csv shares with eval.csv (the
    env's episode metrics, e.g. `won`); all of metrics.csv's columns when it has no eval.csv."""
    path = Path(path)
    columns = set(_header(path / "metrics.csv")) - {"step", "episode"}
    if (path / "eval.csv").is_file():
        columns &= set(_header(path / "eval.csv"))
    return columns | {RETURN}


def load_run(path: Path, column: str = RETURN) -> Run:
    """Read one run folder, its series of `column`; a folder without config.yaml or metrics.csv is not a
    run."""
    path = Path(path)
    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    if not config_file.is_file():
        raise GbmrError(f"'{path}' is not a run folder: no config.yaml")
    if not metrics_file.is_file():
        raise GbmrError(f"'{path}' is not a run folder: no metrics.csv")
    text = config_file.read_text()
    config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    if not isinstance(config, dict) or not {"algo", "env", "seed"} <= config.keys():
        raise GbmrError(f"'{config_file}' is not a run config: it needs the keys algo, env and seed")
    status_file = path / "status.json"
    status = json.loads(status_file.read_text()).get("status", "unknown") if status_file.is_file() else (
        "unknown")
    train_steps, train_values = _read_series(metrics_file, "step", column)
    eval_file = path / "eval.csv"
    if eval_file.is_file():
        eval_steps, eval_values = _read_series(eval_file, "step", "mean_return" if column == RETURN else column)
    else:
        eval_steps, eval_values = np.empty(0, np.int64), np.empty(0)
    return Run(path, config, text, str(config["algo"]), str(config["env"]), int(config["seed"]), status,
               train_steps, train_values, eval_steps, eval_values, column)


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def assign_variants(runs: list[Run]) -> None:
    """Label each run with the config values that differ among runs of its algorithm on the same env.

    Comparing within an env first keeps per-env presets (e.g. a different lr for Atari and MinAtar) from
    splitting one algorithm into fake variants. A key whose value most runs of the algorithm share (a
    baseline with a few ablations) is named only in the labels of the runs that differ from it, so a label
    says what was changed; a key without such a majority (a sweep) is named in every label. A key missing from
    a run's record (saved before the key existed) is left out of that run's label and of the majority.
    """
    flat = [{k: v for k, v in _flatten(r.config).items() if k not in BOOKKEEPING_KEYS} for r in runs]
    varying: dict[str, set[str]] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.algo, run.env), []).append(i)
    for (algo, _), members in groups.items():
        keys = set().union(*(flat[i].keys() for i in members))
        # a key absent from some records (runs saved before the key existed) tells nothing about them
        keys = {k for k in keys if len({repr(flat[i][k]) for i in members if k in flat[i]}) > 1}
        varying.setdefault(algo, set()).update(keys)
    usual: dict[tuple[str, str], str] = {}  # (algo, key) -> repr of the value a strict majority of runs have
    for algo, keys in varying.items():
        members = [i for i, run in enumerate(runs) if run.algo == algo]
        for key in keys:
            recorded = [i for i in members if key in flat[i]]
            value, count = Counter(repr(flat[i][key]) for i in recorded).most_common(1)[0]
            if 2 * count > len(recorded):
                usual[algo, key] = value
    for run, values in zip(runs, flat, strict=True):
        keys = sorted(varying[run.algo])
        run.variant_values = {k: values.get(k) for k in keys}
        run.variant = ", ".join(f"{k.removeprefix('agent.')}={values[k]}" for k in keys
                                if k in values and usual.get((run.algo, k)) != repr(values[k]))


def load_runs(patterns: Sequence[str], column: str = RETURN) -> list[Run]:
    """Find, load and label every run the user named, reading `column` (which every run must have)."""
    paths = find_run_dirs(patterns)
    if column != RETURN:
        have = {p: run_columns(p) for p in paths if (p / "metrics.csv").is_file()}
        lacking = [p for p, columns in have.items() if column not in columns]
        if lacking:
            shared = sorted(set.intersection(*have.values()))
            raise GbmrError(f"{len(lacking)} of the {len(have)} runs (e.g. {lacking[0]}) have no column "
                            f"'{column}'; the columns all runs have: {', '.join(shared)}")
    runs = [load_run(p, column) for p in paths]
    assign_variants(runs)
    return runs


def score_at_budget(run: Run, budget: int | None, metric: str) -> float:
    """The run's value (return) at the budget (its end if no budget or it stopped short); NaN if none logged.

    eval: the last greedy evaluation at or before the budget. eval-mean: the mean of the evaluations at or
    before it. train: the mean return of the episodes that ended in the last 10% of steps before the budget
    (the last episode if that window holds none).
    """
    end = run.last_step if budget is None else min(budget, run.last_step)
    if metric in ("eval", "eval-mean"):
        i = np.searchsorted(run.eval_steps, end, side="right")
        if i == 0:
            return float("nan")
        return float(run.eval_values[i - 1] if metric == "eval" else run.eval_values[:i].mean())
    stop = np.searchsorted(run.train_steps, end, side="right")
    if stop == 0:
        return float("nan")
    start = np.searchsorted(run.train_steps, end - TRAIN_WINDOW * end, side="right")
    return float(run.train_values[min(start, stop - 1):stop].mean())


def curve(run: Run, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's learning curve: evaluations as logged (both eval metrics), or training returns under a
    trailing moving average over 1% of its episodes (raw episode returns are too noisy to read)."""
    if metric != "train":
        return run.eval_steps, run.eval_values
    n = len(run.train_values)
    window = max(1, n // 100)
    sums = np.cumsum(np.concatenate([[0.0], run.train_values]))
    lo = np.maximum(np.arange(1, n + 1) - window, 0)
    return run.train_steps, (sums[1:] - sums[lo]) / (np.arange(1, n + 1) - lo)


def align(curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> np.ndarray:
    """Put curves logged at different steps on one grid by linear interpolation: (runs, len(grid)).

    Outside a run's own logged range the value is NaN, so a short or in-progress run is not extrapolated.
    """
    out = np.full((len(curves), len(grid)), np.nan)
    for i, (steps, values) in enumerate(curves):
        if len(steps) == 0:
            continue
        inside = (grid >= steps[0]) & (grid <= steps[-1])
        out[i, inside] = np.interp(grid[inside], steps, values)
    return out
