"""Experience replay: uniform and n-step replay, and prioritized replay on a vectorised sum tree.

Transitions arrive one vector step at a time (batched over ``num_envs``). Each environment keeps a pending
window of its last ``n_step`` transitions; a full window emits its oldest transition with the n-step return
``R = sum_{j<n} gamma^j r_{t+j}``, ``next_obs = obs_{t+n}`` and ``discount = gamma^n``. When an episode ends
the whole window is flushed with shorter sums: the discount is 0 on termination and ``gamma^k`` on truncation,
so the learner bootstraps from the final observation only when the episode was cut short by a time limit.
The learner's target is then simply ``returns + discounts * max_a Q(next_obs, a)``.

Within one ``add`` the emitted transitions are stored environment by environment, oldest first.
Storage is preallocated numpy; ``obs`` and ``next_obs`` are stored separately in the observation dtype
(uint8 for images), which costs twice the memory of frame-sharing schemes but keeps sampling a plain gather.

Prioritized replay (Schaul et al. 2016) stores priorities ``p = (|td| + eps)^alpha`` in a sum tree and samples
stratified: the total is split into ``batch_size`` equal segments with one uniform draw in each.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gbmr.errors import GbmrError
from gbmr.experiment.state import rng_state, set_rng_state, to_numpy, to_saveable


class Batch(NamedTuple):
    """A sampled batch; every field is a numpy array whose leading dimension is the batch size."""

    obs: np.ndarray
    actions: np.ndarray
    returns: np.ndarray  # n-step discounted reward sum, float32
    next_obs: np.ndarray  # observation n steps later, or the final one if the episode ended sooner
    discounts: np.ndarray  # gamma**k for the k steps summed; 0 if the episode terminated within them
    indices: np.ndarray  # int64 slots, to pass back to update_priorities
    weights: np.ndarray  # importance weights, float32 (ones for uniform replay)


class SumTree:
    """Binary sum tree over ``capacity`` leaves, stored in one array (node i has children 2i and 2i+1).

    Updates and searches are batched in numpy. An update adds each leaf's change to all its ancestors at once
    (``np.add.at``, no loop); a search loops over the tree's depth. Deltas let rounding errors creep into the
    internal sums, so the tree is rebuilt exactly from its leaves after every ``capacity`` leaf writes, which
    costs O(1) amortised per write.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise GbmrError(f"sum tree capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._leaves = 1 << max(capacity - 1, 0).bit_length()  # next power of two
        self._depth = self._leaves.bit_length() - 1
        self._shifts = np.arange(1, self._depth + 1, dtype=np.int64)[:, None]
        self._tree = np.zeros(2 * self._leaves, dtype=np.float64)
        self._writes_since_rebuild = 0

    @property
    def total(self) -> float:
        return float(self._tree[1])

    def __getitem__(self, indices: np.ndarray) -> np.ndarray:
        """Priorities of the given leaves."""
        return self._tree[self._leaves + np.asarray(indices, dtype=np.int64)]

    def update(self, indices: np.ndarray, priorities: np.ndarray) -> None:
        """Set leaf priorities; with repeated indices the last value wins."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        priorities = np.full(indices.shape, priorities, dtype=np.float64)  # also broadcasts a scalar
        if indices.size == 0:
            return
        if indices.min() < 0 or indices.max() >= self.capacity:
            raise IndexError(f"sum tree index out of range [0, {self.capacity})")
        if not (priorities.min() >= 0 and priorities.max() < np.inf):  # also false for NaN
            raise ValueError("priorities must be finite and non-negative")
        # numpy does not promise which duplicate wins a fancy assignment: keep the last occurrence explicitly.
        leaves, last = np.unique(indices[::-1], return_index=True)
        nodes, new = leaves + self._leaves, priorities[::-1][last]
        delta = new - self._tree[nodes]
        self._tree[nodes] = new
        ancestors = nodes >> self._shifts  # (depth, k): every ancestor of every leaf, up to the root
        np.add.at(self._tree, ancestors.ravel(), np.broadcast_to(delta, ancestors.shape).ravel())
        self._writes_since_rebuild += nodes.size
        if self._writes_since_rebuild >= self.capacity:
            self._rebuild()

    def _rebuild(self) -> None:
        """Recompute every internal node from the leaves, bottom up, one level per step."""
        for level in reversed(range(self._depth)):
            lo, hi = 1 << level, 2 << level
            self._tree[lo:hi] = self._tree[2 * lo : 2 * hi : 2] + self._tree[2 * lo + 1 : 2 * hi : 2]
        self._writes_since_rebuild = 0

    def find(self, prefix_sums: np.ndarray) -> np.ndarray:
        """For each s, the leaf i with cumsum[i-1] <= s < cumsum[i] (as ``searchsorted(side='right')``).

        A branch whose sum is zero is never entered, so leaves of priority 0 are never returned even when
        rounding puts s at or beyond the total.
        """
        s = np.array(prefix_sums, dtype=np.float64).reshape(-1)
        nodes = np.ones(s.shape, dtype=np.int64)
        for _ in range(self._depth):
            nodes <<= 1  # the left child
            left_sum = self._tree[nodes]
            right = (s >= left_sum) & (self._tree[nodes + 1] > 0)
            s -= left_sum * right
            nodes += right
        return nodes - self._leaves

    def state_dict(self) -> dict[str, Any]:
        """The whole array, internal sums included, so a restored tree searches bit for bit the same."""
        return {
            "capacity": self.capacity,
            "tree": to_saveable(self._tree),
            "writes": self._writes_since_rebuild,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise GbmrError(f"sum tree capacity {self.capacity} cannot load a state of {state['capacity']}")
        self._tree[:] = to_numpy(state["tree"])
        self._writes_since_rebuild = int(state["writes"])


class ReplayBuffer:
    """Uniform n-step replay over a ring of ``capacity`` transitions."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        action_shape: tuple[int, ...] = (),
        action_dtype: np.dtype = np.int64,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int = 0,
    ) -> None:
        if n_step < 1 or num_envs < 1:
            raise GbmrError(f"n_step and num_envs must be >= 1, got n_step={n_step}, num_envs={num_envs}")
        if capacity < num_envs * n_step:
            # One add can flush every window at once; it must fit without overwriting itself.
            raise GbmrError(f"replay capacity {capacity} must be >= num_envs * n_step = {num_envs * n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise GbmrError(f"gamma must be in [0, 1], got {gamma}")
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.num_envs = num_envs
        self.n_step = n_step
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)

        self.obs = np.zeros((capacity, *self.obs_shape), dtype=obs_dtype)
        self.next_obs = np.zeros((capacity, *self.obs_shape), dtype=obs_dtype)  # calloc: pages stay lazy
        self.actions = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.ptr = 0  # next slot to write
        self.size = 0

        # Pending n-step windows. Every environment steps on every add, so all windows share one ring
        # position: a step goes to column win_slot; an environment's pending steps are its last win_count.
        self.win_obs = np.zeros((num_envs, n_step, *self.obs_shape), dtype=obs_dtype)
        self.win_actions = np.zeros((num_envs, n_step, *action_shape), dtype=action_dtype)
        self.win_rewards = np.zeros((num_envs, n_step), dtype=np.float64)
        self.win_count = np.zeros(num_envs, dtype=np.int64)
        self.win_slot = 0
        k = np.arange(n_step)
        self._k = k
        # discount_matrix[k, j] = gamma^(j-k) for j >= k: row k sums the rewards from time position k on.
        self._discount_matrix = np.triu(gamma ** np.maximum(k[None, :] - k[:, None], 0).astype(np.float64))
        # full_window_weights[c] weighs the columns of a full window whose oldest step is in column c.
        self._full_window_weights = np.zeros((n_step, n_step))
        self._full_window_weights[k[:, None], (k[:, None] + k) % n_step] = self._discount_matrix[0]

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> None:
        """Record one vector step; ``next_obs`` is the true final observation for environments that ended."""
        terminated = np.asarray(terminated, dtype=bool)
        if self.n_step == 1:  # every step is a whole window: store it as it comes, in environment order
            discounts = np.where(terminated, 0.0, self.gamma)
            self._write(obs, actions, rewards, next_obs, discounts)
            return
        n, column = self.n_step, self.win_slot
        self.win_obs[:, column] = obs
        self.win_actions[:, column] = actions
        self.win_rewards[:, column] = rewards
        self.win_slot = (column + 1) % n
        self.win_count += 1
        done = terminated | np.asarray(truncated, dtype=bool)
        if done.any():
            env_idx, columns, returns, discounts = self._flush(done, terminated)
        else:  # the common step: each full window emits its oldest step, which sits in column win_slot
            env_idx = np.flatnonzero(self.win_count == n)
            columns = self.win_slot
            returns = self.win_rewards[env_idx] @ self._full_window_weights[self.win_slot]
            discounts = self.gamma**n
            self.win_count[env_idx] -= 1
        if env_idx.size:
            self._write(self.win_obs[env_idx, columns], self.win_actions[env_idx, columns], returns,
                        np.asarray(next_obs)[env_idx], discounts)

    def _flush(
        self, done: np.ndarray, terminated: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ended episodes emit all their pending steps with shorter sums; other full windows their oldest.

        Works on (env, time position) grids; returns the emitted (env, column, return, discount) rows.
        """
        k, n = self._k, self.n_step
        age = self.win_count[:, None] - k  # steps from time position k to the newest, inclusive
        columns = (self.win_slot - age) % n
        pending = age > 0
        emit = pending & (done[:, None] | ((self.win_count == n)[:, None] & (k == 0)))
        rewards = np.where(pending, np.take_along_axis(self.win_rewards, columns, axis=1), 0.0)
        returns = rewards @ self._discount_matrix.T
        discounts = np.where(terminated[:, None], 0.0, self.gamma ** np.maximum(age, 0))
        self.win_count = np.where(done, 0, np.minimum(self.win_count, n - 1))
        env_idx, pos = np.nonzero(emit)
        return env_idx, columns[env_idx, pos], returns[env_idx, pos], discounts[env_idx, pos]

    def _write(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        returns: np.ndarray,
        next_obs: np.ndarray,
        discounts: np.ndarray | float,
    ) -> None:
        """Write emitted transitions at the ring pointer, in the order given (a slice unless it wraps)."""
        start, count = self.ptr, len(obs)
        slots = np.arange(start, start + count)
        if start + count <= self.capacity:
            rows: slice | np.ndarray = slice(start, start + count)
        else:
            rows = slots = slots % self.capacity
        self.obs[rows] = obs
        self.actions[rows] = actions
        self.returns[rows] = returns
        self.next_obs[rows] = next_obs
        self.discounts[rows] = discounts
        self.ptr = (start + count) % self.capacity
        self.size = min(self.size + count, self.capacity)
        self._on_write(slots)

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        indices, weights = self._sample_indices(batch_size)
        return Batch(
            obs=self.obs[indices],
            actions=self.actions[indices],
            returns=self.returns[indices],
            next_obs=self.next_obs[indices],
            discounts=self.discounts[indices],
            indices=indices,
            weights=weights,
        )

    def _sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.rng.integers(0, self.size, size=batch_size, dtype=np.int64)
        return indices, np.ones(batch_size, dtype=np.float32)

    def _on_write(self, slots: np.ndarray) -> None:
        """Hook for subclasses that track per-slot data (priorities)."""

    def state_dict(self) -> dict[str, Any]:
        """Filled storage, pointers, pending n-step windows and RNG, as tensors and plain values.

        Like ``nn.Module.state_dict`` the tensors share memory with the buffer (copying gigabytes of frames
        per checkpoint would hurt): save it before adding more.
        """
        stored = slice(0, self.size)
        return to_saveable(
            {
                "capacity": self.capacity,
                "num_envs": self.num_envs,
                "n_step": self.n_step,
                "ptr": self.ptr,
                "size": self.size,
                "obs": self.obs[stored],
                "next_obs": self.next_obs[stored],
                "actions": self.actions[stored],
                "returns": self.returns[stored],
                "discounts": self.discounts[stored],
                "win_obs": self.win_obs,
                "win_actions": self.win_actions,
                "win_rewards": self.win_rewards,
                "win_count": self.win_count,
                "win_slot": self.win_slot,
                "rng": rng_state(self.rng),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = to_numpy(state)
        layout = {"capacity": self.capacity, "num_envs": self.num_envs, "n_step": self.n_step}
        saved = {key: state[key] for key in layout}
        if saved != layout:
            raise GbmrError(f"replay state of {saved} does not fit this buffer ({layout})")
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        for name in ("obs", "next_obs", "actions", "returns", "discounts"):
            getattr(self, name)[: self.size] = state[name]
        for name in ("win_obs", "win_actions", "win_rewards", "win_count"):
            getattr(self, name)[...] = state[name]
        self.win_slot = int(state["win_slot"])
        set_rng_state(self.rng, state["rng"])


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritized replay; ``beta`` is annealed by the agent towards 1."""

    def __init__(
        self,
        capacity: int,
        obs_shape: tuple[int, ...],
        obs_dtype: np.dtype,
        action_shape: tuple[int, ...] = (),
        action_dtype: np.dtype = np.int64,
        num_envs: int = 1,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int = 0,
        alpha: float = 0.6,
        eps: float = 1e-6,
        beta: float = 0.4,
    ) -> None:
        super().__init__(
            capacity, obs_shape, obs_dtype, action_shape, action_dtype, num_envs, n_step, gamma, seed
        )
        self.alpha = alpha
        self.eps = eps
        self.beta = beta
        self.max_priority = 1.0
        self.tree = SumTree(self.capacity)

    def _on_write(self, slots: np.ndarray) -> None:
        self.tree.update(slots, self.max_priority)  # so that new transitions are soon replayed

    def _sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        total = self.tree.total
        segment = total / batch_size
        prefix_sums = (np.arange(batch_size) + self.rng.random(batch_size)) * segment
        indices = self.tree.find(prefix_sums)
        probs = self.tree[indices] / total
        weights = (self.size * probs) ** -self.beta
        return indices, (weights / weights.max()).astype(np.float32)

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = (np.abs(np.asarray(td_errors, dtype=np.float64)) + self.eps) ** self.alpha
        self.tree.update(indices, priorities)
        self.max_priority = max(self.max_priority, float(priorities.max(initial=0.0)))

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(tree=self.tree.state_dict(), max_priority=self.max_priority, beta=self.beta)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.tree.load_state_dict(state["tree"])
        self.max_priority = float(state["max_priority"])
        self.beta = float(state["beta"])
