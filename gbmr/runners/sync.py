"""The single-process runner: a collector steps the vector env, the runner feeds the agent, records, checkpoints.

Exact resume. The collector (collector.py) can rebuild every environment from its episode seed and action log,
so a checkpoint can be taken at any step. Together with the agent's state (nets, optimiser, replay, RNG) and the
runner's counters this makes a killed-and-resumed run write the same ``metrics.csv`` as an uninterrupted one.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from gbmr.agents.base import Agent
from gbmr.config import RunConfig
from gbmr.core.run_dir import EPISODE_COLUMNS, EVAL_COLUMNS, LEARNER_COLUMNS, CsvLog, RunDir
from gbmr.core.seeding import derive_seed
from gbmr.core.state import to_numpy, to_saveable
from gbmr.envs.registry import DECISION_METRICS, EPISODE_METRICS, decision_metric_names, episode_metric_names
from gbmr.runners.collector import Collector, batch_of_one

EVAL_STREAM = 1_000_000  # evaluation episodes' seed stream (training env i uses stream i)
LOG_EVERY = 1000  # env steps between TensorBoard points of the training curves (and progress bar updates)
TENSORBOARD_TAGS = {"return": "episode_return", "length": "episode_length"}
PERCENTILES = (50, 90)  # of each per-decision env metric over an evaluation's decisions: eval.csv <name>_p<q>


class Evaluation(NamedTuple):
    """Greedy episodes: their returns, the env's episode metrics (one dict per episode; see
    registry.episode_metric_names), every action taken, in order, and the env's per-decision metrics at each of
    those steps (registry.decision_metric_names; one array per name)."""

    returns: np.ndarray
    metrics: list[dict[str, float]]
    actions: np.ndarray
    decisions: dict[str, np.ndarray]


def evaluate_episodes(agent: Agent, env: gym.Env, episodes: int, base_seed: int, first_index: int = 0,
                      max_steps: int = 27_000) -> Evaluation:
    """``episodes`` greedy episodes, each reset with its own deterministic seed and cut at ``max_steps`` (a
    greedy policy can stall forever where the environment has no time limit)."""
    returns = np.zeros(episodes)
    metrics: list[dict[str, float]] = []
    actions: list[Any] = []
    decisions: dict[str, list[float]] = {}
    for k in range(episodes):
        obs, info = env.reset(seed=derive_seed(base_seed, EVAL_STREAM, first_index + k))
        agent.begin_evaluation_episode()
        done, steps = False, 0
        while not done:
            action = agent.act(batch_of_one(obs), explore=False)[0]
            actions.append(action)
            obs, reward, terminated, truncated, info = env.step(action)
            returns[k] += float(reward)
            for name, value in info.get(DECISION_METRICS, {}).items():
                decisions.setdefault(name, []).append(float(value))
            steps += 1
            done = terminated or truncated or steps >= max_steps
        metrics.append({key: float(v) for key, v in info.get(EPISODE_METRICS, {}).items()})
    return Evaluation(returns, metrics, np.asarray(actions),
                      {name: np.asarray(values) for name, values in decisions.items()})


def evaluate(agent: Agent, env: gym.Env, episodes: int, base_seed: int, first_index: int = 0,
             max_steps: int = 27_000) -> np.ndarray:
    """Returns of ``episodes`` greedy episodes (evaluate_episodes without the rest)."""
    return evaluate_episodes(agent, env, episodes, base_seed, first_index, max_steps).returns


def mean_metrics(metrics: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, float]:
    """The mean over episodes of each named metric the episodes reported."""
    return {name: float(np.mean(values)) for name in names
            if (values := [m[name] for m in metrics if name in m])}


def percentile_columns(names: tuple[str, ...]) -> tuple[str, ...]:
    """eval.csv's columns for the per-decision metrics ``names``: ``<name>_p50``, ``<name>_p90``."""
    return tuple(f"{name}_p{q}" for name in names for q in PERCENTILES)


def decision_percentiles(decisions: dict[str, np.ndarray], names: tuple[str, ...]) -> dict[str, float]:
    """The median and 90th percentile of each named per-decision metric over all the evaluation's decisions
    (its episodes pooled; numpy's linear interpolation between order statistics)."""
    result: dict[str, float] = {}
    for name in names:
        if len(values := decisions.get(name, ())):
            result.update(zip(percentile_columns((name,)), np.percentile(values, PERCENTILES).tolist(), strict=True))
    return result


class SyncRunner:
    def __init__(
        self,
        config: RunConfig,
        agent: Agent,
        envs: gym.vector.VectorEnv | None,
        eval_env: gym.Env,
        run: RunDir,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.agent = agent
        self.envs = envs
        self.eval_env = eval_env
        self.run = run
        self.progress = progress
        self.collector = Collector(envs, config.seed) if envs is not None else None  # None: actors step them
        self.step = 0
        self.episodes = 0
        self.evaluations = 0
        self.metric_sums: dict[str, float] = {}
        self.metric_counts: dict[str, int] = {}
        self.learner_sums: dict[str, float] = {}  # learner metrics since the last learner.csv row
        self.learner_counts: dict[str, int] = {}
        self.learner_updates = 0
        self.recent_returns: deque[float] = deque(maxlen=20)
        self.unlogged_rows: list[dict[str, float]] = []  # metrics.csv rows not yet summarised in TensorBoard

    # ------------------------------------------------------------------ the loop
    def train(self, checkpoint: dict[str, Any] | None = None) -> None:
        cfg = self.config
        resuming = checkpoint is not None
        if resuming:
            self._load(checkpoint)
        else:
            self._start()
        runner = checkpoint["runner"] if resuming else {}
        self.env_metric_names = episode_metric_names(self.eval_env)  # e.g. Mario's shaping terms, x, flags
        self.decision_names = decision_metric_names(self.eval_env)  # e.g. frames each button is held
        columns = EPISODE_COLUMNS + self.env_metric_names + tuple(self.agent.metric_names)
        self.metrics = CsvLog(self.run.metrics, columns, runner["metrics_rows"] if resuming else None)
        self.evals = CsvLog(self.run.eval, EVAL_COLUMNS + self.env_metric_names + percentile_columns(
            self.decision_names), runner["eval_rows"] if resuming else None)
        self.learner = CsvLog(self.run.learner, LEARNER_COLUMNS + tuple(self.agent.metric_names),
                              runner.get("learner_rows", 0) if resuming else None)
        # The checkpoint's own step was fully logged before it was saved (evaluation, TensorBoard points): keep it.
        self.writer = SummaryWriter(str(self.run.tensorboard), purge_step=self.step + 1 if resuming else None)
        self.bar = tqdm(total=cfg.total_steps, initial=self.step, unit="step", disable=not self.progress,
                        dynamic_ncols=True, smoothing=0.05)
        self.run.write_status("running", self.step, cfg.total_steps)
        self.next_eval = _next_multiple(self.step, cfg.eval_every)
        self.next_checkpoint = _next_multiple(self.step, cfg.checkpoint_every)
        self.next_log = _next_multiple(self.step, LOG_EVERY)
        self.clock, self.clock_step = time.perf_counter(), self.step
        try:
            while self.step < cfg.total_steps:
                self._advance()
                self._bookkeeping()
            self._log_episodes(self.writer)
            self._log_learner(self.learner, self.writer)
            self.bar.update(self.step - self.bar.n)
            self.run.write_status("complete", self.step, cfg.total_steps)
        finally:
            self.bar.close()
            self.writer.close()
            self.metrics.close()
            self.evals.close()
            self.learner.close()
            self._stop()

    def _start(self) -> None:
        """A new run: the first observations."""
        self.collector.start()

    def _stop(self) -> None:  # noqa: B027 - a hook for runners that own processes
        """The run ended or failed: release what ``_start`` or ``_load`` acquired."""

    def _advance(self) -> None:
        """One vector step: act, step, observe, learn if the agent's schedule says so, account episodes."""
        step = self.collector.step(self.agent.act(self.collector.obs, explore=True))
        self.agent.observe(*step[:6])
        self._accumulate(self.agent.update())
        self.step += self.collector.num_envs
        for _, ret, length, env_metrics in step.finished:
            self._end_episode(ret, length, self.metrics, env_metrics)

    def _bookkeeping(self) -> None:
        """Evaluate, checkpoint and log where the step counter has passed their multiples."""
        cfg, writer = self.config, self.writer
        if cfg.eval_episodes > 0 and (self.step >= self.next_eval or self.step >= cfg.total_steps):
            self._evaluate(self.evals, writer)
            self.next_eval = _next_multiple(self.step, cfg.eval_every)
        if self.step >= self.next_checkpoint or self.step >= cfg.total_steps:
            self._log_episodes(writer)  # so a resumed run logs the same windows
            self._log_learner(self.learner, writer)
            self.run.save_checkpoint(self._state(self.metrics.rows, self.evals.rows, self.learner.rows))
            self.run.write_status("running", self.step, cfg.total_steps)
            self.next_checkpoint = _next_multiple(self.step, cfg.checkpoint_every)
        if self.step >= self.next_log:
            self._log_episodes(writer)
            self._log_learner(self.learner, writer)
            now = time.perf_counter()
            writer.add_scalar("time/steps_per_second", (self.step - self.clock_step) / (now - self.clock), self.step)
            if self.recent_returns:
                self.bar.set_postfix(ret=f"{np.mean(self.recent_returns):.1f}", refresh=False)
            self.bar.update(self.step - self.bar.n)
            self.clock, self.clock_step = now, self.step
            self.next_log = _next_multiple(self.step, LOG_EVERY)

    def _end_episode(self, ret: float, length: int, metrics: CsvLog, env_metrics: dict[str, float] | None = None
                     ) -> None:
        self.episodes += 1
        row = {"step": self.step, "episode": self.episodes, "return": ret, "length": length}
        row.update({k: v for k, v in (env_metrics or {}).items() if k in self.env_metric_names})
        for key, total in self.metric_sums.items():
            row[key] = total / self.metric_counts[key]
        self.metric_sums, self.metric_counts = {}, {}
        metrics.write(row)
        self.recent_returns.append(ret)
        self.unlogged_rows.append(row)

    def _log_episodes(self, writer: SummaryWriter) -> None:
        """TensorBoard gets the mean of the episodes that ended since its last point, at most every LOG_EVERY
        steps (and at checkpoints); a point per episode cost ~25 us each (TensorBoard's CRC is pure Python)."""
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for row in self.unlogged_rows:
            for key, value in row.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
        for key in sums:
            if key in ("step", "episode"):
                continue
            writer.add_scalar(f"train/{TENSORBOARD_TAGS.get(key, key)}", sums[key] / counts[key], self.step)
        self.unlogged_rows = []

    def _log_learner(self, learner: CsvLog, writer: SummaryWriter) -> None:
        """A learner.csv row and TensorBoard ``learner/*`` points: the mean of each metric over the updates
        since the last row, apart from the episodes (an on-policy update spans many of them, or none)."""
        if not self.learner_updates:
            return
        row = {"step": self.step, "updates": self.learner_updates}
        for key, total in self.learner_sums.items():
            row[key] = total / self.learner_counts[key]
            writer.add_scalar(f"learner/{key}", row[key], self.step)
        learner.write(row)
        self.learner_sums, self.learner_counts, self.learner_updates = {}, {}, 0

    def _evaluate(self, evals: CsvLog, writer: SummaryWriter) -> None:
        cfg = self.config
        result = evaluate_episodes(self.agent, self.eval_env, cfg.eval_episodes, cfg.seed,
                                   first_index=self.evaluations * cfg.eval_episodes, max_steps=cfg.eval_max_steps)
        returns = result.returns
        self.evaluations += 1
        row = {"step": self.step, "mean_return": float(returns.mean()), "std_return": float(returns.std()),
               "min_return": float(returns.min()), "max_return": float(returns.max()), "episodes": len(returns)}
        env_values = {**mean_metrics(result.metrics, self.env_metric_names),
                      **decision_percentiles(result.decisions, self.decision_names)}
        evals.write({**row, **env_values})
        writer.add_scalar("eval/mean_return", row["mean_return"], self.step)
        for name, value in env_values.items():
            writer.add_scalar(f"eval/{name}", value, self.step)
        log_action_histograms(writer, result.actions, self.step)
        for name in self.decision_names:  # e.g. frames held per decision, where eval.csv has two percentiles
            if len(values := result.decisions.get(name, ())):
                writer.add_histogram(f"eval/decisions/{name}", values, self.step)

    def _accumulate(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.learner_updates += 1
        for key, value in metrics.items():
            for sums, counts in ((self.metric_sums, self.metric_counts), (self.learner_sums, self.learner_counts)):
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1

    # ------------------------------------------------------------------ checkpoints
    def _state(self, metrics_rows: int, eval_rows: int, learner_rows: int) -> dict[str, Any]:
        runner = {
            "step": self.step,
            "episodes": self.episodes,
            "evaluations": self.evaluations,
            **self._collection_state(),
            "metric_sums": self.metric_sums,
            "metric_counts": self.metric_counts,
            "recent_returns": list(self.recent_returns),
            "metrics_rows": metrics_rows,
            "eval_rows": eval_rows,
            "learner_rows": learner_rows,
        }
        return {"runner": to_saveable(runner), "agent": to_saveable(self.agent.state_dict()),
                "torch_rng": torch.get_rng_state()}

    def _load(self, checkpoint: dict[str, Any]) -> None:
        runner = to_numpy(checkpoint["runner"])
        self.agent.load_state_dict(checkpoint["agent"])
        torch.set_rng_state(checkpoint["torch_rng"])
        self.step = runner["step"]
        self.episodes = runner["episodes"]
        self.evaluations = runner["evaluations"]
        self.metric_sums = dict(runner["metric_sums"])
        self.metric_counts = dict(runner["metric_counts"])
        self.recent_returns.extend(runner["recent_returns"])
        self._load_collection(runner)

    def _collection_state(self) -> dict[str, Any]:
        """Where the environments are (the collector's episodes), for the checkpoint."""
        return self.collector.state_dict()

    def _load_collection(self, runner: dict[str, Any]) -> None:
        self.collector.load_state_dict(runner)


def log_action_histograms(writer: SummaryWriter, actions: np.ndarray, step: int) -> None:
    """TensorBoard histograms of the actions an evaluation took: one over the indices of a discrete space, one per
    dimension of a continuous one."""
    if actions.size == 0:
        return
    if actions.ndim == 1:
        writer.add_histogram("eval/actions", actions, step)
        return
    for d in range(actions.shape[1]):
        writer.add_histogram(f"eval/action_{d}", actions[:, d], step)


def _next_multiple(step: int, every: int) -> int:
    """The first multiple of ``every`` strictly after ``step`` (never, when ``every`` is 0)."""
    return (step // every + 1) * every if every > 0 else np.iinfo(np.int64).max
