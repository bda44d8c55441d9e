"""`gbmr sweep`: a grid of runs (algorithms x environments x hyperparameter values x seeds), run to the end.

A sweep file is YAML::

    name: cartpole-dqn-lr            # default: the file name without .yaml
    out: runs/sweeps/cartpole-dqn-lr # root folder of the run folders (default runs/sweeps/<name>; --out wins)
    algos: [dqn]                     # or algo -> overrides for that algorithm only: {dqn: {}, nec: {dnd_size: 5e4}}
    envs: [CartPole-v1]
    seeds: [1, 2, 3]
    total_steps: 50000               # optional: default each preset's
    preset: classic                  # optional: default each environment family's preset
    set: {eval_every: 5000}          # config keys applied to every run
    grid: {lr: [3.0e-4, 1.0e-3]}     # config key -> values: one run per combination (the cross product)

Keys in ``set``, ``grid`` and the per-algorithm overrides are what `gbmr train --set` takes: run keys
(``eval_every``), hyperparameters (``lr`` or ``agent.lr``) and environment options (``env_options.frame_skip``);
``set`` and the per-algorithm overrides may also hold ``agent:`` / ``env_options:`` sections like a config file.
Precedence, lowest first: preset < ``set`` < per-algorithm overrides < ``grid`` < ``seeds`` and ``total_steps``.

Each run lives in ``OUT/<algo>_<env>[_<key>=<value>...]_s<seed>``, a name made only from the algorithm, the
environment, the run's grid values and its seed, so running the sweep again finds its runs: complete ones
(status.json) are skipped, interrupted ones (a config.yaml, not complete) are resumed from their checkpoint, the
rest are started. A folder whose saved config differs from what the sweep now asks for is an error, never
silently reused. The whole grid is validated before anything runs: every config is built and every
(algorithm, environment) pair is checked on a real environment.

Runs go to one of three places: this process (``workers=1``), a pool of ``workers`` spawned processes (no
progress bars), or one Ray task per run (``ray_address``; ``"local"`` starts Ray on this machine with ``workers``
CPUs). Each run sets torch's threads from its config's ``torch_threads`` (default 1), so N workers use N cores.
Ray tasks write to ``OUT`` as the driver resolves it, so on a cluster ``out`` must be a path shared by every node,
and gbmr must be installed on every node. A failing run is reported and the others go on; running the sweep
again retries it. A script that calls ``execute`` with ``workers > 1`` needs the ``if __name__ == "__main__":``
guard that spawned processes require.
"""

from __future__ import annotations

import csv
import itertools
import math
import multiprocessing
import os
import re
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from gbmr.agents import agent_class
from gbmr.config import PRESETS_DIR, RUN_KEYS, RunConfig, build_config, load_yaml
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.run_dir import RunDir
from gbmr.envs import env_family, make_env
from gbmr.experiment.train import resume_run, start_run
from gbmr.runners.distributed import connect_ray

SWEEPS_DIR = PRESETS_DIR / "sweeps"
SWEEP_KEYS = ("name", "out", "algos", "envs", "seeds", "total_steps", "preset", "set", "grid")
# Chosen by the sweep's own keys; in `set` or `grid` they would be silently ignored or overwritten.
OWN_KEYS = {"algo": "algos", "env": "envs", "seed": "seeds", "preset": "preset"}


@dataclass(frozen=True)
class SweepRun:
    """One point of the grid: its folder, its config, and how far it had got when the sweep was loaded."""

    name: str
    path: Path
    config: RunConfig
    state: str  # "complete" | "partial" | "new"
    step: int  # env steps done according to status.json (0 when new)


@dataclass(frozen=True)
class Sweep:
    name: str
    out: Path
    runs: list[SweepRun]


@dataclass(frozen=True)
class Outcome:
    """What happened to one run this time: ``error`` is None when it finished."""

    name: str
    action: str  # "started" | "resumed"
    seconds: float
    final_return: float | None = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------- loading
def find_sweep_file(name_or_path: str | Path) -> Path:
    """A path to a sweep file, or the name of one shipped in configs/sweeps/ (``minatar-dqn``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = SWEEPS_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
    raise GbmrError(f"sweep file '{name_or_path}' does not exist (shipped sweeps: {', '.join(names)})")


def load_sweep(name_or_path: str | Path, out: str | Path | None = None) -> Sweep:
    """Read and validate a sweep file; every run's config is built and checked before anything runs."""
    path = find_sweep_file(name_or_path)
    spec = load_yaml(path)
    try:
        return _build(spec, path, out)
    except GbmrError as exc:
        raise GbmrError(f"sweep '{path}': {exc}") from None


def _build(spec: dict[str, Any], path: Path, out: str | Path | None) -> Sweep:
    for key in spec:
        if key not in SWEEP_KEYS:
            raise unknown_choice("sweep key", str(key), SWEEP_KEYS)
    name = str(spec.get("name") or path.stem)
    # absolute: worker processes and Ray tasks may not share the driver's working directory
    root = Path(out or spec.get("out") or Path("runs") / "sweeps" / name).absolute()
    algos = _algos(spec.get("algos"))
    envs = _list(spec, "envs", str)
    seeds = _list(spec, "seeds", int)
    grid = _section(spec, "grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise GbmrError(f"grid values of '{key}' must be a non-empty list, got {values!r}")
    common = _overrides(_section(spec, "set"), "set")
    runs = []
    for algo, algo_overrides in algos.items():
        config_cls = agent_class(algo).Config
        per_algo = _overrides(algo_overrides, f"algos.{algo}")
        for env in envs:
            family = env_family(env)
            for values in itertools.product(*grid.values()):
                point = dict(zip(grid, values, strict=True))
                overrides = common + per_algo + _overrides(point, "grid")
                for seed in seeds:
                    config = build_config(algo, env, config_cls, family, preset=spec.get("preset"),
                                          overrides=overrides, seed=seed, total_steps=spec.get("total_steps"))
                    run_name = folder_name(algo, env, point, seed)
                    runs.append(_plan(run_name, root / run_name, config))
    clashes = [n for n, count in Counter(r.name for r in runs).items() if count > 1]
    if clashes:
        raise GbmrError(f"several runs map to the folder '{clashes[0]}': make seeds and grid values distinct")
    _check_spaces(runs)
    return Sweep(name, root, runs)


def _algos(value: Any) -> dict[str, dict[str, Any]]:
    """``[dqn, nec]`` or ``{dqn: {...overrides}, nec: null}`` -> algo -> its own overrides."""
    if isinstance(value, list) and value and all(isinstance(a, str) for a in value):
        return {a: {} for a in value}
    if isinstance(value, dict) and value:
        for algo, overrides in value.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise GbmrError(f"overrides of algorithm '{algo}' must be a mapping, got {overrides!r}")
        return {str(a): o or {} for a, o in value.items()}
    raise GbmrError(f"'algos' must be a non-empty list of algorithm names (or a mapping), got {value!r}")


def _list(spec: dict[str, Any], key: str, kind: type) -> list:
    value = spec.get(key)
    if not isinstance(value, list) or not value or not all(type(v) is kind for v in value):
        raise GbmrError(f"'{key}' must be a non-empty list of {kind.__name__}, got {value!r}")
    return value


def _section(spec: dict[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key) or {}
    if not isinstance(value, dict):
        raise GbmrError(f"'{key}' must be a mapping of config keys to values, got {value!r}")
    return value


def _overrides(values: dict[str, Any], where: str) -> list[str]:
    """A mapping of config keys -> ``key=value`` strings as `gbmr train --set` takes them.

    ``agent.lr`` and an ``agent:`` section become plain ``lr``: build_config reads one list of overrides as one
    layer, where a plain key beats ``agent.`` whatever the order, so only one spelling lets a later level win.
    Values are written in YAML flow style, which reads back as the same value (floats, lists, quoted strings).
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in ("agent", "env_options") and isinstance(value, dict):
            flat.update({f"{key}.{sub}": v for sub, v in value.items()})
        else:
            flat[str(key)] = value
    flat = {_plain(key): value for key, value in flat.items()}
    pairs = []
    for key, value in flat.items():
        if key in OWN_KEYS:
            raise GbmrError(f"'{key}' in '{where}': give it with the sweep's '{OWN_KEYS[key]}' key instead")
        text = yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("...\n").strip()
        pairs.append(f"{key}={text}")
    return pairs


def _plain(key: str) -> str:
    sub = key.removeprefix("agent.")
    return key if sub in RUN_KEYS else sub


def folder_name(algo: str, env: str, point: dict[str, Any], seed: int) -> str:
    """``dqn_CartPole-v1_lr=0.001_s1``: the same grid point always gets the same folder."""
    parts = [algo, env, *(f"{key}={_fmt(value)}" for key, value in point.items()), f"s{seed}"]
    return re.sub(r"[^\w.=+-]", "-", "_".join(parts))


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "-".join(_fmt(v) for v in value)
    return repr(value) if isinstance(value, float) else str(value)


def _plan(name: str, path: Path, config: RunConfig) -> SweepRun:
    """Classify the run's folder, refusing one that holds a run with another config."""
    run = RunDir(path)
    if not run.config.is_file():
        return SweepRun(name, path, config, "new", 0)
    saved = _flatten(run.read_config())
    wanted = _flatten(yaml.safe_load(yaml.safe_dump(config.to_dict())))  # tuples -> lists, as saved
    # a key the folder lacks is a config field added since it was written: the run had its default, so it
    # matches only if the sweep wants that default (an entry of a mapping-valued field has none we know)
    defaults = _defaults(config)
    differ = [k for k in sorted(wanted) if saved.get(k, defaults.get(k, _NO_DEFAULT)) != wanted[k]]
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k, 'not set')!r} there, {wanted[k]!r} in the sweep" for k in differ[:3])
        raise GbmrError(f"run folder '{path}' holds a run with another config ({shown}); delete the folder or "
                        "give the sweep another out")
    status = run.read_status()
    state = "complete" if status.get("status") == "complete" else "partial"
    return SweepRun(name, path, config, state, int(status.get("step", 0)))


_NO_DEFAULT = object()


def _defaults(config: RunConfig) -> dict[str, Any]:
    """The flattened defaults of the run's and its agent's config fields (where the field has one)."""
    def of(cls: type, prefix: str) -> dict[str, Any]:
        values = {}
        for f in fields(cls):
            if f.default is not MISSING:
                values[prefix + f.name] = f.default
            elif f.default_factory is not MISSING:
                values[prefix + f.name] = f.default_factory()
        return _flatten(yaml.safe_load(yaml.safe_dump(values)))

    return {**of(type(config), ""), **of(type(config.agent), "agent.")}


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_spaces(runs: list[SweepRun]) -> None:
    """Build each distinct environment once and ask each algorithm whether it can handle its spaces."""
    seen = set()
    for run in runs:
        cfg = run.config
        key = (cfg.algo, cfg.env, repr(sorted(cfg.env_options.items())))
        if key in seen:
            continue
        seen.add(key)
        env = make_env(cfg.env, **cfg.env_options)
        try:
            agent_class(cfg.algo).check_spaces(env.observation_space, env.action_space)
        finally:
            env.close()


def describe(sweep: Sweep) -> str:
    """The ``--dry-run`` listing: every run with its state and the steps it has done."""
    lines = [f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.out}"]
    for run in sweep.runs:
        lines.append(f"  {run.state:8s}  {run.name}  {run.step}/{run.config.total_steps} steps")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- running
def execute(sweep: Sweep, workers: int = 1, ray_address: str | None = None, progress: bool = True) -> list[Outcome]:
    """Run every run that is not complete; print one line per finished run and a summary; never raise for a
    failing run (its Outcome carries the error)."""
    if workers < 1:
        raise GbmrError(f"--workers must be at least 1, got {workers}")
    todo = [r for r in sweep.runs if r.state != "complete"]
    states = Counter(r.state for r in sweep.runs)
    if ray_address and todo:
        ray = connect_ray(ray_address, workers)
        where = f"Ray ({ray_address})"
    else:
        where = "this process" if workers == 1 or not todo else f"{workers} worker processes"
    print(f"sweep {sweep.name}: {len(sweep.runs)} runs in {sweep.out}: {states['complete']} complete (skipped), "
          f"{states['partial']} to resume, {states['new']} to start, in {where}", flush=True)
    start = time.perf_counter()
    if not todo:
        finished: Iterator[Outcome] = iter(())
    elif ray_address:
        finished = _ray_outcomes(ray, todo)
    elif workers > 1:
        finished = _pool_outcomes(todo, workers)
    else:
        finished = (_execute(run, progress=progress) for run in todo)
    outcomes = []
    for outcome in finished:
        outcomes.append(outcome)
        print(f"[{len(outcomes)}/{len(todo)}] {_line(outcome)}", flush=True)
        if outcome.error and outcome.error.startswith("Traceback"):  # a bug, not a user error: show where
            print(outcome.error, file=sys.stderr, flush=True)
    failed = [o for o in outcomes if o.error]
    done = Counter(o.action for o in outcomes if not o.error)
    print(f"sweep {sweep.name}: {done['started']} started and {done['resumed']} resumed runs finished, "
          f"{states['complete']} skipped (complete), {len(failed)} failed, in {time.perf_counter() - start:.1f} s")
    if failed:
        print(f"failed: {', '.join(o.name for o in failed)}; run the sweep again to retry them "
              "(interrupted runs resume)")
    return outcomes


def _line(outcome: Outcome) -> str:
    if outcome.error:
        return f"FAILED {outcome.name} ({outcome.action}, {outcome.seconds:.1f} s): " + (
            outcome.error.strip().splitlines()[-1])
    score = "" if outcome.final_return is None else f", final eval return {outcome.final_return:.2f}"
    return f"{outcome.action} {outcome.name} ({outcome.seconds:.1f} s{score})"


def _execute(run: SweepRun, progress: bool = False) -> Outcome:
    """Run one grid point to the end. The folder decides start or resume when the run actually begins, so a
    retried Ray task or a second sweep over the same folders continues what is there."""
    begin = time.perf_counter()
    action = "resumed" if RunDir(run.path).config.is_file() else "started"
    try:
        if action == "resumed":
            resume_run(run.path, progress=progress)
        else:
            start_run(run.config, run.path, progress=progress)
    except Exception as exc:  # one failing run must not stop the sweep
        error = str(exc) if isinstance(exc, GbmrError) else traceback.format_exc()
        return Outcome(run.name, action, time.perf_counter() - begin, error=error)
    return Outcome(run.name, action, time.perf_counter() - begin, final_return=_final_return(run.path))


def _planned_action(run: SweepRun) -> str:
    return "resumed" if run.state == "partial" else "started"


def _final_return(path: Path) -> float | None:
    with open(RunDir(path).eval, newline="") as f:
        rows = list(csv.DictReader(f))
    return float(rows[-1]["mean_return"]) if rows else None


def _init_worker() -> None:
    """Ctrl-C reaches every process of the terminal's group: a worker leaves at once, as if killed. Its run
    folder (atomic checkpoint, flushed CSVs) resumes from the last checkpoint on the next sweep; unwinding
    instead can hang in the TensorBoard writer's close, and then the whole sweep with it."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))


def _pool_outcomes(todo: list[SweepRun], workers: int) -> Iterator[Outcome]:
    # spawn: a fresh interpreter per worker, safe whatever threads (torch, tensorboard) this process runs
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker)
    try:
        futures = {pool.submit(_execute, run): run for run in todo}
        for future in as_completed(futures):
            run = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # the worker process itself died (BrokenProcessPool)
                yield Outcome(run.name, _planned_action(run), 0.0, error=f"worker process failed: {exc!r}")
    finally:
        pool.shutdown(cancel_futures=True)


def _ray_outcomes(ray: Any, todo: list[SweepRun]) -> Iterator[Outcome]:
    """One Ray task per run, reported as each finishes."""
    task = ray.remote(num_cpus=1)(_execute)
    pending = {task.remote(run): run for run in todo}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            try:
                yield ray.get(ref)
            except ray.exceptions.RayError as exc:
                yield Outcome(run.name, _planned_action(run), 0.0, error=f"Ray task failed: {exc}")
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()
