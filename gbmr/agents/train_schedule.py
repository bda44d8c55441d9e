"""When a replay agent learns (DQN, SAC, TD3, DDPG share it): no gradient phase before ``learning_starts`` env
steps, then one phase whenever ``train_freq`` env steps have passed since the last, of ``gradient_steps`` steps.
Counted in env steps summed over environments, so with N envs a phase comes every ceil(train_freq / N) vector
steps, as Stable-Baselines3 counts."""

from __future__ import annotations

from gbmr.core.errors import GbmrError


class TrainSchedule:
    def __init__(self, learning_starts: int, train_freq: int, gradient_steps: int) -> None:
        if train_freq < 1 or gradient_steps < 1:
            raise GbmrError(f"train_freq and gradient_steps must be >= 1, got {train_freq} and {gradient_steps}")
        self.learning_starts, self.train_freq, self.gradient_steps = learning_starts, train_freq, gradient_steps
        self.last_train = 0  # env steps at the last phase

    def phase(self, steps: int) -> int:
        """How many gradient steps to take now, at ``steps`` env steps (0: not yet); a phase starts the wait."""
        if steps < self.learning_starts or steps - self.last_train < self.train_freq:
            return 0
        self.last_train = steps
        return self.gradient_steps

    def state_dict(self) -> dict[str, int]:
        return {"last_train": self.last_train}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.last_train = state["last_train"]
