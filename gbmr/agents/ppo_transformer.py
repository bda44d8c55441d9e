"""PPO whose policy remembers: a causal Transformer over the episode's last ``lookback`` observations.

Acting keeps each layer's keys and values per environment (a KV cache cleared at episode starts), so a step
computes the new observation's query, key and value only. Training cuts each env's rollout into chunks of
``sequence_chunk`` consecutive steps; a chunk is one sequence of its ``lookback - 1`` preceding observations
(kept across rollouts as context) followed by its own, run once with windowed attention, so a minibatch of M
steps costs about M + lookback tokens per chunk instead of M x lookback. The cache is part of the checkpoint,
so a resumed run acts exactly as the uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gbmr.agents.ppo import PPOAgent, PPOConfig
from gbmr.core.errors import GbmrError
from gbmr.nets.policies import TransformerActorCritic


@dataclass
class PPOTransformerConfig(PPOConfig):
    model: str = "mlp"  # the per-observation encoder before the Transformer
    hidden: tuple[int, ...] = (64,)
    lookback: int = 32  # observations each step attends to (itself included)
    d_model: int = 64
    num_heads: int = 4
    num_layers: int = 2
    sequence_chunk: int = 0  # steps per training sequence; 0 = an env's whole rollout


class PPOTransformerAgent(PPOAgent):
    Config = PPOTransformerConfig
    distributed = None  # an actor's KV cache would have to travel with its slice of envs: not built

    def __init__(self, config: PPOTransformerConfig, observation_space, action_space, num_envs, device, seed,
                 total_steps):
        chunk = config.sequence_chunk or config.n_steps
        if chunk < 1 or config.n_steps % chunk:
            raise GbmrError(f"sequence_chunk ({config.sequence_chunk}) must divide n_steps ({config.n_steps})")
        self.chunk = chunk
        super().__init__(config, observation_space, action_space, num_envs, device, seed, total_steps)
        transformer = self.net.transformer
        self.cache = transformer.initial_cache(num_envs)
        self.starts = torch.ones(num_envs, dtype=torch.bool, device=device)  # the next act begins an episode
        self.eval_cache: dict[str, torch.Tensor] | None = None
        # The lookback - 1 observations before the rollout, per env, so its first steps see their past too.
        context = config.lookback - 1
        self.context_obs = torch.zeros((context, *self.storage.data["obs"].shape[1:]),
                                       dtype=self.storage.data["obs"].dtype, device=device)
        self.context_starts = torch.ones((context, num_envs), dtype=torch.bool, device=device)

    def build_net(self) -> TransformerActorCritic:
        cfg = self.config
        return TransformerActorCritic(self.observation_space, self.action_space, cfg.model, cfg.hidden,
                                      cfg.activation, cfg.frame_difference, cfg.lookback, cfg.d_model,
                                      cfg.num_heads, cfg.num_layers)

    def rollout_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {**super().rollout_fields(), "starts": ((), torch.bool)}  # where episodes began: attention cuts

    # ------------------------------------------------------------------ acting
    def begin_evaluation_episode(self) -> None:
        self.eval_cache = None

    def act(self, obs, explore: bool = True):
        obs_t = torch.as_tensor(obs, device=self.device)
        with torch.inference_mode():
            if not explore:
                fresh = self.eval_cache is None
                if fresh:
                    self.eval_cache = self.net.transformer.initial_cache(len(obs_t))
                starts = torch.full((len(obs_t),), fresh, dtype=torch.bool, device=self.device)
                params, _, self.eval_cache = self.net.step(obs_t, starts, self.eval_cache)
                return self.head.to_env(self.head.mode(params))
            params, values, self.cache = self.net.step(obs_t, self.starts, self.cache)
            actions = self.head.sample(params, self.sampling_noise())
            self._pending = {"obs": obs_t, "actions": actions, "values": values, "starts": self.starts.clone(),
                             "log_probs": self.head.log_prob(params, actions)}
        return self.head.to_env(actions)

    def observe(self, obs, actions, rewards, next_obs, terminated, truncated) -> None:
        super().observe(obs, actions, rewards, next_obs, terminated, truncated)
        self.starts = torch.as_tensor(terminated | truncated, device=self.device)

    def state_value(self, obs) -> torch.Tensor:
        """V of each env's next observation in its episode's context (the cache itself is not advanced)."""
        with torch.inference_mode():
            cache = {k: v.clone() for k, v in self.cache.items()}
            obs_t = torch.as_tensor(obs, device=self.device)
            return self.net.step(obs_t, torch.zeros_like(self.starts), cache)[1]

    # ------------------------------------------------------------------ training
    def training_units(self, rollout_steps: int) -> int:
        return rollout_steps // self.chunk * self.num_envs

    def evaluate_units(self, units: torch.Tensor):
        n, chunk, context = self.num_envs, self.chunk, self.config.lookback - 1
        obs = torch.cat((self.context_obs, self.storage["obs"]))  # [context + T, N, ...]
        starts = torch.cat((self.context_starts, self.storage["starts"]))
        envs, first = units % n, units // n * chunk  # unit u: env u % N, rollout steps [first, first + chunk)
        positions = first[:, None] + torch.arange(context + chunk, device=self.device)  # in the padded rollout
        params, values = self.net.sequence(obs[positions, envs[:, None]], starts[positions, envs[:, None]])
        params, values = params[:, context:], values[:, context:]  # the chunk's own steps
        steps = first[:, None] + torch.arange(chunk, device=self.device)
        flat = (steps * n + envs[:, None]).reshape(-1)  # time-major index t * N + n
        params = params.reshape(len(flat), *params.shape[2:])
        actions = self.storage["actions"].reshape(-1, *self.storage["actions"].shape[2:])[flat]
        return self.head.log_prob(params, actions), self.head.entropy(params), values.reshape(-1), flat

    def learn(self) -> dict[str, float]:
        metrics = super().learn()
        context = self.config.lookback - 1
        if context:
            self.context_obs = torch.cat((self.context_obs, self.storage["obs"]))[-context:].clone()
            self.context_starts = torch.cat((self.context_starts, self.storage["starts"]))[-context:].clone()
        self.cache = self.rebuilt_cache()
        return metrics

    @torch.inference_mode()
    def rebuilt_cache(self) -> dict[str, torch.Tensor]:
        """The cache the new weights give the last lookback - 1 observations: the old one holds keys and values
        of the old weights, so the next rollout's first steps would be acted on a context training never sees."""
        cache = self.net.transformer.initial_cache(self.num_envs)
        for obs, starts in zip(self.context_obs, self.context_starts, strict=True):
            cache = self.net.transformer.step(self.net.encoder(obs), starts, cache)[1]
        return cache

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {**super().state_dict(), "cache": self.cache, "starts": self.starts,
                "context_obs": self.context_obs, "context_starts": self.context_starts}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.cache = {k: v.to(self.device) for k, v in state["cache"].items()}
        self.starts = state["starts"].to(self.device)
        self.context_obs = state["context_obs"].to(self.device)
        self.context_starts = state["context_starts"].to(self.device)
