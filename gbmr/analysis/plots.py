"""Report figures, drawn with matplotlib's object API (no pyplot, so no GUI backend and no global state).

Each function saves one PNG and returns its path; a method keeps the same colour in every figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

Band = tuple[np.ndarray, np.ndarray, np.ndarray]  # mean, CI low, CI high


def method_colors(methods: Sequence[str]) -> dict[str, tuple]:
    cmap = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(methods)}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def learning_curves(
    env: str, grid: np.ndarray, bands: Mapping[str, Band], colors: Mapping[str, tuple], ylabel: str,
    budget: int | None, path: Path,
) -> Path:
    """Mean return across seeds with its 95% CI band against env steps, one line per method."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for method, (mean, low, high) in bands.items():
        ax.plot(grid, mean, color=colors[method], label=method, lw=1.6)
        ax.fill_between(grid, low, high, color=colors[method], alpha=0.2, lw=0)
    if budget is not None:
        ax.axvline(budget, color="0.3", ls="--", lw=1, label=f"budget {budget:,}")
    ax.set(title=env, xlabel="env steps", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def _intervals(ax, labels: Sequence[str], est, low, high, colors: Sequence) -> None:
    """Horizontal CI bars with a tick at the point estimate, one row per label (top to bottom)."""
    y = np.arange(len(labels))[::-1]
    ax.barh(y, np.asarray(high) - np.asarray(low), left=low, height=0.6, color=colors, alpha=0.6)
    ax.vlines(est, y - 0.3, y + 0.3, color="k", lw=1.5)
    ax.plot(est, y, "k|", ms=12)  # still visible when the interval has zero width
    ax.set_yticks(y, labels)
    ax.grid(axis="x", alpha=0.3)


def aggregates(table: pd.DataFrame, colors: Mapping[str, tuple], path: Path) -> Path:
    """IQM, median, mean and optimality gap of normalised scores with stratified-bootstrap 95% CIs."""
    metrics = list(dict.fromkeys(table.metric))
    methods = list(dict.fromkeys(table.method))
    fig = Figure(figsize=(3.2 * len(metrics), 0.5 * len(methods) + 1.4))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        rows = table[table.metric == metric].set_index("method").loc[methods]
        _intervals(ax, methods, rows.estimate, rows.ci_low, rows.ci_high, [colors[m] for m in methods])
        ax.set_title(metric + (" (lower is better)" if metric == "Optimality gap" else ""), fontsize=10)
        ax.set_xlabel("normalised score")
    return _save(fig, path)


def improvement(table: pd.DataFrame, path: Path) -> Path:
    """P(X > Y) for each pair, with 95% CIs; 0.5 (no difference) marked."""
    labels = [f"P({x} > {y})" for x, y in zip(table.x, table.y, strict=True)]
    fig = Figure(figsize=(6.4, 0.45 * len(labels) + 1.2))
    ax = fig.add_subplot()
    _intervals(ax, labels, table.estimate, table.ci_low, table.ci_high, ["tab:blue"] * len(labels))
    ax.axvline(0.5, color="0.4", ls="--", lw=1)
    ax.set(xlim=(0, 1), xlabel="probability of improvement")
    return _save(fig, path)


def profiles(
    taus: np.ndarray, curves: Mapping[str, np.ndarray], cis: Mapping[str, np.ndarray],
    colors: Mapping[str, tuple], path: Path,
) -> Path:
    """Performance profiles: fraction of runs scoring above tau, with 95% CI bands."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for method, frac in curves.items():
        ax.plot(taus, frac, color=colors[method], label=method, lw=1.6)
        ax.fill_between(taus, cis[method][0], cis[method][1], color=colors[method], alpha=0.2, lw=0)
    ax.set(xlabel=r"normalised score $\tau$", ylabel=r"fraction of runs with score > $\tau$", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def hyperparameter(algo: str, key: str, table: pd.DataFrame, path: Path) -> Path:
    """Score against one config key, one panel per env, one line per setting of the other keys.

    `table` has columns env, group, value, mean, ci_low, ci_high. Numeric values go on a real axis (log when
    they span more than a factor of 10); other values are evenly spaced categories.
    """
    envs = list(dict.fromkeys(table.env))
    fig = Figure(figsize=(4.2 * len(envs), 3.6))
    axes = fig.subplots(1, len(envs), squeeze=False)[0]
    values = list(dict.fromkeys(table.value))
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    positions = {v: (float(v) if numeric else i) for i, v in enumerate(sorted(values, key=str))}
    for ax, env in zip(axes, envs, strict=True):
        for group, rows in table[table.env == env].groupby("group", sort=False):
            rows = rows.sort_values("value", key=lambda s: s.map(positions))
            x = rows.value.map(positions).to_numpy(float)
            ax.errorbar(x, rows["mean"], yerr=[rows["mean"] - rows.ci_low, rows.ci_high - rows["mean"]],
                        marker="o", capsize=3, label=group or None)
        if numeric and min(positions.values()) > 0 and max(positions.values()) > 10 * min(positions.values()):
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(list(positions.values()), [str(v) for v in positions])
        ax.set(title=env, xlabel=key.removeprefix("agent."), ylabel="score at budget")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[1]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{algo}: score against {key.removeprefix('agent.')}")
    return _save(fig, path)
