"""N Ray actors step the environments with copies of the policy; one learner (this process) trains.

Actor k holds envs [k*M, (k+1)*M) of the run's N = actors * M and steps them with a collector seeded by those
global indices, acting with the agent's Policy alone (agents with ``make_policy``: DQN, GBMR-DQN, SAC, TD3,
DDPG) or else a copy of the agent, whose weights come from one Ray object-store put per policy version. What
an actor sends depends on the agent (``Agent.distributed``):

- on-policy (PPO, A2C, ...): its [T, M] slice of the rollout (log pi and V included, and the bootstrap values),
  which the learner joins into the [T, N] rollout it learns from;
- off-policy (DQN and its kin): its [T, M] transitions, which the learner observes a vector step at a time, with
  an update after each as in one process (sync: all actors' slices joined into N-env steps; async: one actor's
  M-env slice at a time, observed as those envs' own steps, for agents that take slices, see
  ``Agent.async_problem``).
- central (the episodic-memory agents NEC, MFEC, GQ, GBMR, whose acting reads a large memory that changes every
  step): nothing but the envs; each vector step the learner acts on all actors' observations in one batch, sends
  each its actions and observes the joined step (central inference, SEED RL), so the memory never leaves the
  learner and the run is the single-process run. Sync only; an actor that dies is rebuilt in place: a
  replacement started from its state at the last checkpoint (or the run's start) replays the actions sent to it
  since (the learner keeps them), so its envs are where they were and the run equals the uninterrupted one.

``sync`` mode collects every batch with the latest weights (versions advance by exactly one per batch): for an
on-policy agent, whose env i samples from its own stream wherever it lives, the run is the single-process run
(tests/test_distributed.py checks it). ``async`` mode keeps one batch in flight per actor (a bounded queue of
``actors`` batches); the learner takes whichever is ready, logs how many versions behind the learner's it was
collected (``lag``), drops batches more than ``max_lag`` behind and learns from the rest: PPO's ratio against
the stored behaviour log-probabilities, clipped, is the truncated importance weight, or (``correction=vtrace``)
V-trace's truncated ratios correct its advantages and value targets; an off-policy learner needs none.
The budget is exact as in one process: the batch that reaches ``total_steps`` counts (and learns from) only its
vector steps up to it; an on-policy slice cut so is not learnt from, as a cut rollout in one process.
Off-policy agents run async when they take slices: the replay of DQN and SAC/TD3/DDPG keeps each env's
n-step window and shared frames on its own, so slices in any interleaving store what one process stores
(GBMR-DQN's replay-slot to graph-node map still needs whole vector steps).

Faults: an actor that dies is replaced by a new one started from its state after the last batch the learner
accepted, so no transition is counted twice and the step counter stays right. The learner checkpoints at batch
boundaries with the actors' states; ``--resume`` continues. Exact equality of a resumed run is promised for
sync mode only.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gbmr.agents import agent_class, build_agent
from gbmr.agents.base import Agent
from gbmr.config import RunConfig, config_from_dict
from gbmr.core.devices import resolve_device
from gbmr.core.errors import GbmrError, unknown_choice
from gbmr.core.run_dir import CsvLog
from gbmr.core.seeding import seed_everything
from gbmr.core.state import rng_state, set_rng_state, to_numpy, to_saveable
from gbmr.envs import make_vector_env
from gbmr.runners.collector import Collector
from gbmr.runners.sync import SyncRunner

MODES = ("sync", "async")


def connect_ray(address: str, num_cpus: int) -> Any:
    """Ray, joined at ``address`` or started here (``local``) with ``num_cpus`` CPUs, unless this process is
    connected already (then that Ray is used, and left running at the end); a clear error without Ray."""
    try:
        import ray
    except ImportError:
        raise GbmrError("Ray is not installed: pip install 'gbmr[ray]'") from None
    if not ray.is_initialized():
        if address == "local":
            # address "local": a new Ray of this run's own, never another process's found on the machine
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    return ray


def _ray_running() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def check_distributed(config: RunConfig) -> None:
    """The one-line errors for a distributed config that cannot run."""
    cls = agent_class(config.algo)
    if cls.distributed is None:
        able = sorted(name for name in _algorithms() if agent_class(name).distributed)
        raise GbmrError(f"{config.algo} does not run with --actors; these do: {', '.join(able)}")
    if config.mode not in MODES:
        raise unknown_choice("mode", config.mode, MODES)
    problem = cls.async_problem(config.agent) if config.mode == "async" else None
    if problem:
        raise GbmrError(f"--mode async cannot run {config.algo}: {problem}; or use --mode sync")
    if config.num_envs % config.actors:
        raise GbmrError(f"num_envs ({config.num_envs}) must be a multiple of --actors ({config.actors}): "
                        "each actor steps the same number of envs")
    if config.actor_steps < 1 or config.max_lag < 0:
        raise GbmrError("actor_steps must be at least 1 and max_lag at least 0")


def _algorithms() -> list[str]:
    from gbmr.agents import ALGORITHMS

    return list(ALGORITHMS)


def _transitions(steps: list[tuple]) -> dict[str, np.ndarray]:
    """An actor's vector steps (obs, actions, rewards, next_obs, terminated, truncated) stacked per column."""
    names = ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")
    return {name: np.stack(column) for name, column in zip(names, zip(*steps, strict=True), strict=True)}


class RolloutActor:
    """One Ray actor: a slice of the run's envs, its collector and, for acting, the agent's Policy with its
    per-env state (agents with ``make_policy``) or else a copy of the agent."""

    def __init__(self, config: dict[str, Any], env_ids: list[int], state: dict[str, Any] | None) -> None:
        cfg = config_from_dict(config, agent_class(config["algo"]).Config)
        torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        envs = make_vector_env(cfg.env, len(env_ids), **cfg.env_options)
        self.total_envs = cfg.num_envs
        self.env_ids = np.asarray(env_ids)
        self.agent: Agent | None = None  # central inference: the learner acts, the actor only steps its envs
        self.policy: Any = None  # an agent split into Policy and Learner: the actor builds only the Policy
        cls = agent_class(cfg.algo)
        if hasattr(cls, "make_policy"):
            self.policy = cls.make_policy(cfg.agent, envs.single_observation_space, envs.single_action_space,
                                          resolve_device(cfg.device), cfg.seed, cfg.total_steps)
        elif cls.distributed != "central":
            self.agent = build_agent(cfg, envs.single_observation_space, envs.single_action_space, len(env_ids))
        acting = self.policy if self.policy is not None else self.agent
        if hasattr(acting, "assign_envs"):  # per-env exploration streams: those of this actor's envs
            acting.assign_envs(self.env_ids)
        self.acting_state = self.policy.initial_state(len(env_ids)) if self.policy is not None else {}
        self.on_policy = cls.distributed == "on-policy"
        self.collector = Collector(envs, cfg.seed, self.env_ids)
        if state is None:
            self.collector.start()
        else:
            self.collector.load_state_dict(to_numpy(state["collector"]))
            for rng, saved in zip(self._rngs(), state["rngs"], strict=True):
                set_rng_state(rng, saved)
            self.acting_state = dict(state.get("acting_state", self.acting_state))  # older states: none kept

    def _rngs(self) -> list[np.random.Generator]:
        if self.policy is not None:
            return self.policy.acting_rngs()
        return self.agent.acting_rngs() if self.agent is not None else []

    def state(self) -> dict[str, Any]:
        """What a replacement needs to go on from here: the collector, the acting generators and the Policy's
        per-env state (TD3/DDPG's OU noise)."""
        return {"collector": to_saveable(self.collector.state_dict()), "rngs": [rng_state(r) for r in self._rngs()],
                "acting_state": dict(self.acting_state)}

    def observation(self) -> Any:
        return self.collector.obs

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        """Central inference: one vector step with the learner's actions; the transitions, the episodes that
        ended (global env ids) and the observations the learner acts on next."""
        step = self.collector.step(actions)
        return {"step": tuple(step[:6]), "finished": self._finished(step, 0), "obs": self.collector.obs}

    def replay(self, actions: list[np.ndarray]) -> None:
        """Central inference, a replacement: step the envs again with the actions its predecessor took since
        the state it was started from; envs are deterministic given seeds and actions, so they end where the
        dead actor's were."""
        for step_actions in actions:
            self.collector.step(step_actions)

    def pid(self) -> int:
        import os

        return os.getpid()

    def collect(self, weights: dict[str, torch.Tensor], version: int, steps: int, start_step: int
                ) -> dict[str, Any]:
        """``steps`` vector steps with the given weights, acting as the learner would from ``start_step``
        (with the Policy alone for an agent split into Policy and Learner, else with the agent's copy)."""
        if self.policy is not None:
            load, follow, act = self.policy.load_weights, self.policy.follow_schedule, self._act_with_policy
        else:
            load, follow, act = self.agent.load_policy_weights, self.agent.follow_schedule, self.agent.act
        load(weights)
        transitions, finished = [], []
        for t in range(steps):
            follow(start_step + t * self.total_envs)
            step = self.collector.step(act(self.collector.obs, explore=True))
            if self.policy is not None:
                dones = torch.from_numpy(np.asarray(step.terminated) | np.asarray(step.truncated))
                self.acting_state = self.policy.episode_ends(self.acting_state, dones)
            if self.on_policy:
                self.agent.observe(*step[:6])
            else:
                transitions.append(step[:6])
            finished += self._finished(step, t)
        if self.on_policy and self.agent.storage.full:
            storage = self.agent.storage
            batch = {"data": {k: v.clone() for k, v in storage.data.items()}, "last_values": storage.last_values}
            storage.clear()
        elif self.on_policy:  # a rollout cut by the budget: the learner only counts its steps and episodes
            self.agent.storage.clear()
            batch = {}
        else:
            batch = _transitions(transitions)
        return {"version": version, "env_ids": self.env_ids, "batch": batch, "finished": finished,
                "state": self.state()}

    def _act_with_policy(self, obs: np.ndarray, explore: bool) -> np.ndarray:
        """The Policy's ``act`` on this actor's envs, carrying its per-env state from step to step."""
        actions, self.acting_state, _ = self.policy.act(torch.as_tensor(obs), self.acting_state, explore)
        return actions.numpy()

    def _finished(self, step: Any, t: int) -> list[tuple]:
        """The episodes that ended at vector step ``t`` of a batch: (t, global env id, return, length, extras)."""
        return [(t, int(self.env_ids[i]), ret, length, extra) for i, ret, length, extra in step.finished]


def _join(parts: list[Any]) -> Any:
    """Actors' slices (arrays, or dicts of arrays for dict observations) joined along the env axis."""
    if isinstance(parts[0], dict):
        return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return np.concatenate(parts)


DISTRIBUTED_COLUMNS = ("step", "actor", "version", "learner_version", "lag", "dropped")


class DistributedRunner(SyncRunner):
    """The learner: batches from the actors instead of a collector of its own; evaluation, logging, the run
    folder and checkpoints are SyncRunner's. Writes distributed.csv: one row per batch with its policy version,
    the learner's, the lag and whether it was dropped."""

    def __init__(self, config: RunConfig, agent: Agent, eval_env: Any, run: Any, progress: bool = True) -> None:
        check_distributed(config)
        super().__init__(config, agent, None, eval_env, run, progress)
        self.per_actor = config.num_envs // config.actors
        self.on_policy = agent.distributed == "on-policy"
        self.central = agent.distributed == "central"
        self.batch_steps = agent.storage.capacity if self.on_policy else config.actor_steps  # vector steps
        self.version = 0  # the learner's policy version: one per update phase
        self.actor_states: list[Any] = [None] * config.actors  # after the last batch taken from each actor
        self.actors: list[Any] = []
        self.pending: dict[Any, int] = {}  # async: the batch in flight per actor -> actor index
        self.slices = 0  # async: actor slices joined into the learner's rollout so far
        self.sent: list[list[np.ndarray]] = [[] for _ in range(config.actors)]  # central: actions since the state
        self.restarts = 0
        self.distributed_rows = 0
        self.ray: Any = None

    # ------------------------------------------------------------------ actors
    def _spawn_all(self) -> None:
        cfg = self.config
        self.owns_ray = not _ray_running()
        self.ray = connect_ray(cfg.ray_address, cfg.actors)
        self.actor_cls = self.ray.remote(num_cpus=1)(RolloutActor)
        self.actors = [self._spawn(k) for k in range(cfg.actors)]
        self.log = CsvLog(self.run.path / "distributed.csv", DISTRIBUTED_COLUMNS,
                          self.distributed_rows if self.distributed_rows or self.step else None)
        self._weights, self._weights_version = None, -1
        if self.central:
            self.obs = _join(self.ray.get([actor.observation.remote() for actor in self.actors]))

    def _spawn(self, k: int) -> Any:
        env_ids = list(range(k * self.per_actor, (k + 1) * self.per_actor))
        return self.actor_cls.remote(self.config.to_dict(), env_ids, self.actor_states[k])

    def _stop(self) -> None:
        if self.ray is None:
            return
        self.log.close()
        for actor in self.actors:
            self.ray.kill(actor)
        if self.owns_ray and self.config.ray_address == "local":
            self.ray.shutdown()

    def _launch(self, k: int, steps: int | None = None) -> Any:
        """Actor k collects a batch with the latest weights (put in the object store once per version)."""
        if self._weights_version != self.version:
            self._weights, self._weights_version = self.ray.put(self.agent.policy_weights()), self.version
        ref = self.actors[k].collect.remote(self._weights, self.version, steps or self.batch_steps, self.step)
        self.pending[ref] = k
        return ref

    def _result(self, ref: Any) -> tuple[int, dict[str, Any]]:
        """The batch behind ``ref``; an actor that died is replaced by one started from its last state, which
        collects the batch again (the lost one was never counted)."""
        k = self.pending.pop(ref)
        for _ in range(3):
            try:
                result = self.ray.get(ref)
                self.actor_states[k] = result["state"]
                return k, result
            except self.ray.exceptions.RayActorError:
                self.restarts += 1
                self.actors[k] = self._spawn(k)
                ref = self._launch(k)
                self.pending.pop(ref)
        raise GbmrError(f"actor {k} died three times in a row; giving up")

    # ------------------------------------------------------------------ the loop
    def _start(self) -> None:
        self._spawn_all()

    def _advance(self) -> None:
        if self.central:
            self._act_centrally()
        elif self.config.mode == "sync":
            n = self.config.num_envs  # the last batch stops at the budget, as one process does
            steps = min(self.batch_steps, -(-(self.config.total_steps - self.step) // n))
            refs = [self._launch(k, steps) for k in range(self.config.actors)]
            results = [self._result(ref) for ref in refs]
            self._log_batches(results, dropped=False)
            if steps < self.batch_steps:  # a rollout cut by the budget is not learnt from, as in one process
                self._learn_transitions([r for _, r in results], steps, observe=not self.on_policy)
            elif self.on_policy:
                self._learn_rollout([result for _, result in results])
            else:
                self._learn_transitions([result for _, result in results], steps)
        else:
            if not self.pending:
                for k in range(self.config.actors):
                    self._launch(k)
            (ref,), _ = self.ray.wait(list(self.pending), num_returns=1)
            k, result = self._result(ref)
            self._launch(k)
            stale = self.version - result["version"] > self.config.max_lag
            self._log_batches([(k, result)], dropped=stale)
            m = self.per_actor  # the budget's last batch counts only the vector steps up to it, as one process
            steps = min(self.batch_steps, -(-(self.config.total_steps - self.step) // m))
            if self.on_policy:
                self._take_slice(result, stale, steps)
            else:
                self._learn_transitions([result], steps, observe=not stale, sliced=True)

    def _act_centrally(self) -> None:
        """Central inference (SEED RL): the learner's agent acts on all actors' observations in one batch, the
        actors step their slices, and the learner observes the joined vector step and updates: the single-process
        loop with the envs elsewhere, evaluation and checkpoints at the same steps. The memory never leaves the
        learner; no weights travel, so distributed.csv stays empty (every action is from the latest policy)."""
        m = self.per_actor
        actions = self.agent.act(self.obs, explore=True)
        parts = [actions[k * m:(k + 1) * m] for k in range(self.config.actors)]
        refs = [actor.step.remote(part) for actor, part in zip(self.actors, parts, strict=True)]
        results = [self._central_step(k, ref, part) for k, (ref, part) in enumerate(zip(refs, parts, strict=True))]
        self.agent.observe(*(_join([r["step"][i] for r in results]) for i in range(6)))
        self._accumulate(self.agent.update())
        self.step += self.config.num_envs
        self.obs = _join([r["obs"] for r in results])
        for _, _, ret, length, extra in (f for r in results for f in r["finished"]):
            self._end_episode(ret, length, self.metrics, extra)

    def _central_step(self, k: int, ref: Any, actions: np.ndarray) -> dict[str, Any]:
        """Actor k's vector step; if it died, a replacement started from its last saved state replays the
        actions sent since then and takes this step: its envs are where they were, the run goes on unchanged."""
        for _ in range(3):
            try:
                result = self.ray.get(ref)
                self.sent[k].append(actions)
                return result
            except self.ray.exceptions.RayActorError:
                self.restarts += 1
                self.actors[k] = self._spawn(k)
                self.actors[k].replay.remote(self.sent[k])  # an actor runs its calls in order
                ref = self.actors[k].step.remote(actions)
        raise GbmrError(f"actor {k} died three times in a row; giving up")

    def _log_batches(self, results: list[tuple[int, dict[str, Any]]], dropped: bool) -> None:
        for k, result in results:
            lag = self.version - result["version"]
            self.log.write({"step": self.step, "actor": k, "version": result["version"],
                            "learner_version": self.version, "lag": lag, "dropped": int(dropped)})
            self.writer.add_scalar("distributed/lag", lag, self.step)
        self.distributed_rows = self.log.rows

    def _end_episodes(self, finished: list[tuple[int, int, float, int, dict]], base_step: int, envs: int) -> None:
        """metrics.csv rows in the order one process writes them: by step, then env; ``step`` as it was then."""
        for t, _, ret, length, extra in sorted(finished, key=lambda f: f[:2]):
            self.step = base_step + (t + 1) * envs
            self._end_episode(ret, length, self.metrics, extra)

    def _learn_rollout(self, results: list[dict[str, Any]]) -> None:
        """Sync, on-policy: join the actors' [T, M] slices into the [T, N] rollout and learn from it."""
        storage, base, n = self.agent.storage, self.step, self.config.num_envs
        for k, result in enumerate(results):
            self._fill(k, result)
        storage.size = self.batch_steps
        self.agent.steps += self.batch_steps * n
        finished = [f for result in results for f in result["finished"]]
        self._end_episodes([f for f in finished if f[0] < self.batch_steps - 1], base, n)
        self.step = base + self.batch_steps * n
        self._accumulate(self.agent.update())  # as one process: the update, then the last step's episodes
        self.version += 1
        self._end_episodes([f for f in finished if f[0] == self.batch_steps - 1], base, n)

    def _fill(self, slot: int, result: dict[str, Any]) -> None:
        columns = slice(slot * self.per_actor, (slot + 1) * self.per_actor)
        storage = self.agent.storage
        for name, value in result["batch"]["data"].items():
            storage.data[name][:, columns] = value.to(storage.data[name].device)
        storage.last_values[columns] = result["batch"]["last_values"].to(storage.last_values.device)

    def _take_slice(self, result: dict[str, Any], stale: bool, steps: int) -> None:
        """Async, on-policy: the batch's first ``steps`` env steps and their episodes count; unless stale or cut
        by the budget, its slice joins the learner's rollout, which is learnt from once all N envs' worth of
        slices are in."""
        base, m = self.step, self.per_actor
        self._end_episodes([f for f in result["finished"] if f[0] < steps], base, m)
        self.step = base + steps * m
        if stale or steps < self.batch_steps:
            return
        self._fill(self.slices, result)
        self.slices += 1
        self.agent.steps += self.batch_steps * m
        if self.slices == self.config.actors:
            self.agent.storage.size = self.batch_steps
            self._accumulate(self.agent.update())
            self.version += 1
            self.slices = 0

    def _learn_transitions(self, results: list[dict[str, Any]], steps: int, observe: bool = True,
                           sliced: bool = False) -> None:
        """Off-policy: observe the actors' transitions (sync: all ``num_envs``; ``sliced``: one actor's, which
        the agent adds as those envs' own steps) a vector step at a time, each followed by an update, as one
        process does (``observe=False``: only count the steps and episodes)."""
        n, base = self.per_actor if sliced else self.config.num_envs, self.step
        batches = [result["batch"] for result in results]
        envs = {"envs": results[0]["env_ids"]} if sliced else {}
        finished = sorted((f for result in results for f in result["finished"]), key=lambda f: f[:2])
        for t in range(steps):
            if observe:
                row = [_join([b[name][t] for b in batches]) for name in
                       ("obs", "actions", "rewards", "next_obs", "terminated", "truncated")]
                self.agent.observe(*row, **envs)
                self._accumulate(self.agent.update())
            self.step = base + (t + 1) * n
            for _, _, ret, length, extra in (f for f in finished if f[0] == t):
                self._end_episode(ret, length, self.metrics, extra)
        if observe:
            self.version += 1

    # ------------------------------------------------------------------ checkpoints
    def _collection_state(self) -> dict[str, Any]:
        if self.central:  # the actors' envs as of this vector step; a replacement replays from here
            self.actor_states = self.ray.get([actor.state.remote() for actor in self.actors])
            self.sent = [[] for _ in self.actors]
        return {"actor_states": self.actor_states, "version": self.version, "slices": self.slices,
                "restarts": self.restarts, "distributed_rows": self.distributed_rows}

    def _load_collection(self, runner: dict[str, Any]) -> None:
        self.actor_states = list(runner["actor_states"])
        self.version, self.slices = int(runner["version"]), int(runner["slices"])
        self.restarts, self.distributed_rows = int(runner["restarts"]), int(runner["distributed_rows"])
        self._spawn_all()
