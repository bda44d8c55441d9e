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

from gbmr.agents.policy_gradient import StochasticPolicy
from gbmr.agents.ppo import PPOAgent, PPOConfig, PPOLearner
from gbmr.core.batch import Batch
from gbmr.core.errors import GbmrError
from gbmr.memory.rollout import SequenceStorage
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


class TransformerPolicy(StochasticPolicy):
    """Acting through the Transformer's KV cache: the state is each layer's keys and values per env and where
    the next step begins an episode (``starts``)."""

    def initial_state(self, num_envs: int) -> dict[str, torch.Tensor]:
        return {**self.net.transformer.initial_cache(num_envs),
                "starts": torch.ones(num_envs, dtype=torch.bool, device=self.device)}

    @staticmethod
    def cache(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The state's KV cache: everything but ``starts``."""
        return {k: v for k, v in state.items() if k != "starts"}

    def distribution(self, obs, state):
        params, values, cache = self.net.step(obs, state["starts"], self.cache(state))
        return params, values, {**cache, "starts": torch.zeros_like(state["starts"])}

    def episode_ends(self, state, dones):
        return {**state, "starts": dones.clone()}

    def value(self, obs, state):
        """V of each env's next observation in its episode's context (the cache itself is not advanced)."""
        cache = {k: v.clone() for k, v in self.cache(state).items()}
        return self.net.step(obs, torch.zeros_like(state["starts"]), cache)[1]

    @torch.inference_mode()
    def after_learning(self, state, storage: SequenceStorage):
        """The cache the new weights give the last lookback - 1 observations: the old one holds keys and values
        of the old weights, so the next rollout's first steps would be acted on a context training never sees."""
        cache = self.net.transformer.initial_cache(len(state["starts"]))
        for obs, starts in zip(storage.context_obs, storage.context_starts, strict=True):
            cache = self.net.transformer.step(self.net.encoder(obs), starts, cache)[1]
        return {**cache, "starts": state["starts"]}


class TransformerPPOLearner(PPOLearner):
    """PPO on windows: unit u is env u % N's chunk u // N of ``sequence_chunk`` steps, run after the
    ``lookback - 1`` steps before it (from the batch's context where the chunk starts the rollout)."""

    def __init__(self, config: PPOTransformerConfig, policy, num_envs, device, seed, total_steps):
        self.chunk = config.sequence_chunk or config.n_steps
        if self.chunk < 1 or config.n_steps % self.chunk:
            raise GbmrError(f"sequence_chunk ({config.sequence_chunk}) must divide n_steps ({config.n_steps})")
        super().__init__(config, policy, num_envs, device, seed, total_steps)

    def training_units(self, rollout_steps: int) -> int:
        return rollout_steps // self.chunk * self.num_envs

    def evaluate_units(self, batch: Batch, units: torch.Tensor):
        n, chunk, context = self.num_envs, self.chunk, self.config.lookback - 1
        obs = torch.cat((batch.context["obs"], batch["obs"]))  # [context + T, N, ...]
        starts = torch.cat((batch.context["starts"], batch["starts"]))
        envs, first = units % n, units // n * chunk  # unit u: env u % N, rollout steps [first, first + chunk)
        positions = first[:, None] + torch.arange(context + chunk, device=self.device)  # in the padded rollout
        params, values = self.policy.net.sequence(obs[positions, envs[:, None]], starts[positions, envs[:, None]])
        params, values = params[:, context:], values[:, context:]  # the chunk's own steps
        steps = first[:, None] + torch.arange(chunk, device=self.device)
        flat = (steps * n + envs[:, None]).reshape(-1)  # time-major index t * N + n
        params = params.reshape(len(flat), *params.shape[2:])
        actions = batch.flat("actions")[flat]
        return self.head.log_prob(params, actions), self.head.entropy(params), values.reshape(-1), flat


class PPOTransformerAgent(PPOAgent):
    Config = PPOTransformerConfig
    Policy = TransformerPolicy
    Learner = TransformerPPOLearner
    distributed = None  # an actor's KV cache would have to travel with its slice of envs: not built

    def build_net(self) -> TransformerActorCritic:
        cfg = self.config
        return TransformerActorCritic(self.observation_space, self.action_space, cfg.model, cfg.hidden,
                                      cfg.activation, cfg.frame_difference, cfg.lookback, cfg.d_model,
                                      cfg.num_heads, cfg.num_layers)

    def rollout_fields(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {**super().rollout_fields(), "starts": ((), torch.bool)}  # where episodes began: attention cuts

    def recorded_state(self) -> tuple[str, ...]:
        return ("starts",)

    def build_storage(self, capacity: int) -> SequenceStorage:
        return SequenceStorage(capacity, self.num_envs, self.rollout_fields(), self.device,
                               context=self.config.lookback - 1)
