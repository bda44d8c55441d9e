"""Statistics across seeds and tasks: bootstrap CIs, score normalisation and rliable aggregates.

Per-cell CIs (one algorithm on one env) use a plain vectorised percentile bootstrap over seeds. Aggregates
across envs use rliable's stratified bootstrap (`get_interval_estimates`), with the metric functions written
as numpy one-liners that return the same values as `rliable.metrics` but fast enough for thousands of
resamples.
"""

from __future__ import annotations

import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources

import numpy as np
import pandas as pd
from rliable import library as rly

AGGREGATES = ("IQM", "Median", "Mean", "Optimality gap")

# Stated min-max ranges of the episode return for known non-Atari envs: the worst and best return possible.
MIN_MAX = {
    "CartPole-v0": (0.0, 200.0),
    "CartPole-v1": (0.0, 500.0),
    "Acrobot-v1": (-500.0, 0.0),
    "MountainCar-v0": (-200.0, 0.0),
}
# Stated ranges of env episode metrics a run can be scored by instead of its return (`gbmr compare --column`).
COLUMN_RANGES = {"won": (0.0, 1.0)}


@cache
def atari_reference() -> pd.DataFrame:
    """Random and human scores of the 57 Atari games (DQN / Agent57 table), indexed by snake_case game."""
    with resources.files("gbmr").joinpath("data/atari_scores.csv").open() as f:
        return pd.read_csv(f, index_col="game")


def atari_game(env_id: str) -> str | None:
    """'ALE/Pong-v5' or 'PongNoFrameskip-v4' -> 'pong'; None when the env is not one of the 57 games."""
    name = env_id.removeprefix("ALE/").split("-v")[0]
    name = re.sub(r"(NoFrameskip|Deterministic)$", "", name)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()
    return snake if snake in atari_reference().index else None


@dataclass(frozen=True)
class Normaliser:
    """score -> (score - low) / (high - low); `source` says where low and high came from, for the report."""

    low: float
    high: float
    source: str

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return (np.asarray(scores, float) - self.low) / max(self.high - self.low, 1e-12)


def normaliser(env_id: str, observed: np.ndarray, column: str = "return") -> Normaliser:
    """Returns: Atari random=0, human=1; known envs their stated range. Other columns: their stated range
    (a win rate 0..1). Anything else: min-max of the observed scores."""
    if column != "return":
        if column in COLUMN_RANGES:
            return Normaliser(*COLUMN_RANGES[column], f"stated range of {column}")
        return _observed(observed)
    game = atari_game(env_id)
    if game is not None:
        ref = atari_reference().loc[game]
        return Normaliser(float(ref.random), float(ref.human), f"Atari random/human ({game})")
    if env_id in MIN_MAX:
        low, high = MIN_MAX[env_id]
        return Normaliser(low, high, "stated return range")
    return _observed(observed)


def _observed(observed: np.ndarray) -> Normaliser:
    observed = np.asarray(observed, float)
    return Normaliser(float(np.nanmin(observed)), float(np.nanmax(observed)),
                      "observed min/max over these runs")


def bootstrap_mean_ci(
    values: np.ndarray, reps: int = 2000, confidence: float = 0.95, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over axis 0 (seeds) and its percentile-bootstrap CI, for every remaining column at once.

    NaNs (a seed that has not reached a step) are left out of the means; returns (mean, low, high).
    """
    rng = rng or np.random.default_rng(0)
    values = np.asarray(values, float)
    idx = rng.integers(0, len(values), size=(reps, len(values)))
    with warnings.catch_warnings():  # an all-NaN column (no seed reached that step) is expected
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(values[idx], axis=1)
        tail = (1 - confidence) / 2 * 100
        low, high = np.nanpercentile(means, [tail, 100 - tail], axis=0)
        return np.nanmean(values, axis=0), low, high


@contextmanager
def _seeded(seed: int):
    """rliable draws its resamples from numpy's global RNG: seed it for reproducible CIs, then restore it."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def iqm(scores: np.ndarray) -> float:
    """Interquartile mean over all runs and tasks: drop the lowest and highest 25% (as scipy's trim_mean)."""
    flat = np.sort(np.asarray(scores, float), axis=None)
    cut = int(0.25 * flat.size)
    return float(flat[cut:flat.size - cut].mean())


def aggregate_metrics(scores: np.ndarray) -> np.ndarray:
    """[IQM, median, mean, optimality gap] of a (runs x tasks) matrix of normalised scores, as rliable defines
    them: median and mean of the per-task means; optimality gap = 1 - mean(min(score, 1))."""
    task_means = scores.mean(axis=0)
    return np.array(
        [iqm(scores), np.median(task_means), task_means.mean(), 1.0 - np.minimum(scores, 1.0).mean()]
    )


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks, ties counting half: the Mann-Whitney U / (n m) that rliable uses."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * ties))


def aggregate_estimates(score_dict: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """IQM, median, mean and optimality gap per method with stratified bootstrap 95% CIs (rliable)."""
    with _seeded(seed):
        points, cis = rly.get_interval_estimates(score_dict, aggregate_metrics, reps=reps)
    rows = [
        {"method": m, "metric": name, "estimate": points[m][j], "ci_low": cis[m][0, j],
         "ci_high": cis[m][1, j]}
        for m in score_dict
        for j, name in enumerate(AGGREGATES)
    ]
    return pd.DataFrame(rows)


def improvement_estimates(score_dict: dict[str, np.ndarray], reps: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Probability of improvement of X over Y for each ordered pair (X listed first), with 95% CIs."""
    methods = list(score_dict)
    pairs = {(x, y): [score_dict[x], score_dict[y]] for i, x in enumerate(methods) for y in methods[i + 1:]}
    if not pairs:
        return pd.DataFrame(columns=["x", "y", "estimate", "ci_low", "ci_high"])
    keyed = {f"{x}\0{y}": arrays for (x, y), arrays in pairs.items()}
    with _seeded(seed):
        points, cis = rly.get_interval_estimates(keyed, probability_of_improvement, reps=reps)
    rows = [
        {"x": x, "y": y, "estimate": float(points[k]), "ci_low": float(cis[k].ravel()[0]),
         "ci_high": float(cis[k].ravel()[1])}
        for k, (x, y) in zip(keyed, pairs, strict=True)
    ]
    return pd.DataFrame(rows)


def performance_profiles(
    score_dict: dict[str, np.ndarray], taus: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Fraction of runs with normalised score > tau for each tau, with stratified bootstrap CIs (rliable)."""

    def profile(scores: np.ndarray, tau_list: np.ndarray) -> np.ndarray:
        return (scores.reshape(-1, 1) > tau_list[None, :]).mean(axis=0)

    with _seeded(seed):
        return rly.create_performance_profile(score_dict, taus, custom_profile_func=profile, reps=reps)
