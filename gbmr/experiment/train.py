"""Starting, resuming and evaluating runs: builds environments and agent from a config, hands them to a runner."""

from __future__ import annotations

from pathlib import Path

import torch

from gbmr.agents import agent_class, build_agent
from gbmr.agents.base import Agent
from gbmr.config import RunConfig, config_from_dict, save_config
from gbmr.core.errors import GbmrError
from gbmr.core.run_dir import RunDir
from gbmr.core.seeding import seed_everything
from gbmr.envs import make_env, make_vector_env
from gbmr.runners.sync import SyncRunner


def _runner(config: RunConfig, run: RunDir, progress: bool) -> SyncRunner:
    if config.num_envs < 1:
        raise GbmrError(f"num_envs must be at least 1, got {config.num_envs}")
    if config.actors < 0:
        raise GbmrError(f"actors must be at least 0 (0: one process), got {config.actors}")
    if config.torch_threads < 1:
        raise GbmrError(f"torch_threads must be at least 1, got {config.torch_threads}")
    torch.set_num_threads(config.torch_threads)
    seed_everything(config.seed)
    envs = make_vector_env(config.env, config.num_envs, **config.env_options)
    envs.action_space.seed(config.seed)
    eval_env = make_env(config.env, config.seed, training=False, **config.env_options)
    agent = build_agent(config, envs.single_observation_space, envs.single_action_space)
    if config.actors > 0:  # the actors make their own envs; the learner's are only for the spaces
        from gbmr.runners.distributed import DistributedRunner

        envs.close()
        return DistributedRunner(config, agent, eval_env, run, progress)
    return SyncRunner(config, agent, envs, eval_env, run, progress)


def start_run(config: RunConfig, path: str | Path, progress: bool = True) -> RunDir:
    """Create the run folder, save the config, train to the end."""
    run = RunDir(path)
    runner = _runner(config, run, progress)  # validates everything before the folder is created
    run.create()
    save_config(config, run.config)
    runner.train()
    return run


def load_run_config(run: RunDir) -> RunConfig:
    data = run.read_config()
    return config_from_dict(data, agent_class(data["algo"]).Config)


def resume_run(path: str | Path, progress: bool = True) -> RunDir:
    """Continue an interrupted run from its latest checkpoint (or from scratch if it never wrote one).

    A folder whose status.json records progress but whose checkpoint is gone (copied without checkpoints/, or
    deleted) is refused: starting over would truncate its logs, losing what it recorded.
    """
    run = RunDir.existing(path)
    config = load_run_config(run)
    checkpoint = run.load_checkpoint() if run.latest.is_file() else None
    if checkpoint is None and (step := int(run.read_status().get("step", 0))) > 0:
        raise GbmrError(f"'{path}' logged {step} steps but has no checkpoint ({run.latest}); resuming would "
                        "restart from step 0 and overwrite its logs. Restore checkpoints/latest.pt, or start "
                        f"a new run from its config: gbmr train --algo {config.algo} --env {config.env} "
                        f"--config {run.config} --run-dir NEW_DIR")
    _runner(config, run, progress).train(checkpoint)
    return run


def load_trained_agent(path: str | Path) -> tuple[RunConfig, Agent]:
    """The run's config and its agent restored from the latest checkpoint, for evaluation."""
    run = RunDir.existing(path)
    config = load_run_config(run)
    checkpoint = run.load_checkpoint()
    env = make_env(config.env, config.seed, training=False, **config.env_options)
    agent = build_agent(config, env.observation_space, env.action_space)
    env.close()
    agent.load_state_dict(checkpoint["agent"])
    return config, agent
