"""Environments: one ``make_env`` for every family (classic control, MinAtar, Atari, grid mazes)."""

from gbmr.envs.registry import env_family, env_options, list_env_ids, make_env, make_vector_env

__all__ = ["env_family", "env_options", "list_env_ids", "make_env", "make_vector_env"]
