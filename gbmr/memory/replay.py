"""Experience replay: uniform and n-step replay, and prioritized replay on a vectorised sum tree.

Transitions arrive one vector step at a time (batched over ``num_envs``). Each environment keeps a pending
window of its last ``n_step`` transitions; a full window emits its oldest transition with the n-step return
``R = sum_{j<n} gamma^j r_{t+j}``, ``next_obs = obs_{t+n}`` and ``discount = gamma^n``. When an episode ends
the whole window is flushed with shorter sums: the discount is 0 on termination and ``gamma^k`` on truncation,
so the learner bootstraps from the final observation only when the episode was cut short by a time limit.
The learner's target is then simply ``returns + discounts * max_a Q(next_obs, a)``.

Within one ``add`` the emitted transitions are stored environment by environment, oldest first. An ``add`` may
hold only some environments (``envs``: an async actor's slice): each environment's window advances on its own,
so slices added in any interleaving store each environment's n-step transitions as one process does.
Storage is preallocated numpy. How observations are kept is an ``ObservationStore``: the buffer stores one key
per ``obs`` and ``next_obs`` (in its n-step windows too) and gathers observations by key when it samples.
``ObservationStore`` itself keeps whole observations as keys; ``FrameStore`` (``frame_stack > 0``) keeps each
frame of stacked image observations once, about 8x less memory on Atari, and sampling stays one gather.

Prioritized replay (Schaul et al. 2016) stores priorities ``p = (|td| + eps)^alpha`` in a sum tree and samples
stratified: the total is split into ``batch_size`` equal segments with one uniform draw in each.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from gbmr.core.errors import GbmrError
from gbmr.core.state import rng_state, set_rng_state, to_numpy, to_saveable


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


NEVER = np.iinfo(np.int64).min // 2  # last_use of a frame slot that holds no frame


class ObservationStore:
    """Observations kept whole: the key of an observation is the observation.

    A store turns each vector step's ``obs`` and ``next_obs`` into keys (``encode``), which the buffer keeps per
    transition and in its n-step windows, and sampled keys back into observations (``gather``). Subclasses keep
    less.
    """

    frame_stack = 0

    def __init__(self, obs_shape: tuple[int, ...], obs_dtype: np.dtype) -> None:
        self.key_shape = tuple(obs_shape)
        self.key_dtype = np.dtype(obs_dtype)

    def encode(self, obs: np.ndarray, next_obs: np.ndarray, envs: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Keys of one vector step's observations and next observations, batched over environments (``envs``:
        which environments the rows are, when only some stepped; None: all, in order)."""
        return obs, next_obs

    def hold(self, keys: np.ndarray) -> None:
        """Keys still needed (pending n-step windows while other environments add): keep their frames. Call it
        before ``encode``, which may recycle frames."""

    def gather(self, obs_keys: np.ndarray, next_keys: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``obs`` and ``next_obs`` of valid slots, as views of one new array: two large arrays freed together let
        glibc trim the heap and page-fault it back on every sample, 5x slower for Atari batches."""
        both = np.empty((2, len(slots), *self.key_shape), dtype=self.key_dtype)
        np.take(obs_keys, slots, axis=0, out=both[0], mode="clip")  # "clip": no buffered copy; slots are valid
        np.take(next_keys, slots, axis=0, out=both[1], mode="clip")
        return both[0], both[1]

    def written(self, count: int) -> None:
        """The buffer wrote ``count`` transitions (overwriting as many of the oldest once full)."""

    @property
    def nbytes(self) -> int:
        """Bytes held besides the buffer's key arrays."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class FrameStore(ObservationStore):
    """Stacked image observations ``(stack, *frame)`` with each frame stored once in a pool of frames.

    The key of an observation is the pool slots of its ``stack`` frames. Each environment's ``obs`` is compared
    with its previous ``next_obs`` (equal: same key) and each ``next_obs`` with its ``obs`` (shifted by one frame:
    one new frame). Anything else is stored as new frames, equal neighbours sharing one (the reset padding of
    ``FrameStackObservation``): resets, a stack that is not reset with the episode (the old frames are shared
    too), or a stream that is no frame stack at all. Sharing is decided by comparing contents (~50 KB of
    compares per Atari step), so decoded observations are always exactly those added; a frame stack only makes
    it cheap: one frame per step, plus one per episode for its reset observation.

    Slots are recycled oldest first. A frame is last used by keys made while the buffer had written ``K``
    transitions (``last_use = K``); a transition written as number k refers only to keys made while
    ``K > k - num_envs * n_step**2`` (its observation is at most ``n_step - 1`` adds old and one add writes at
    most ``num_envs * n_step``), so once ``K - capacity`` transitions are overwritten a frame with
    ``last_use <= K - capacity - num_envs * n_step**2`` is free: no stored transition, pending window or previous
    observation can refer to it. Slots sit in a FIFO queue in order of use; when the oldest is still in use the
    pool takes a never used slot, so the frames in use track the need (``capacity * (1 + 1/L)`` for episodes of
    L steps) while the unused tail of the preallocated pool stays virtual memory. Slices of environments added
    on their own (async actors) may wait any number of other adds: before each, the keys they still need are
    stamped again (their previous stacks here, their pending windows by the buffer: ``hold``), so the bound holds.
    """

    def __init__(
        self, stack: int, capacity: int, obs_shape: tuple[int, ...], obs_dtype: np.dtype, num_envs: int, n_step: int
    ) -> None:
        if stack < 1 or len(obs_shape) < 2 or obs_shape[0] != stack or np.dtype(obs_dtype) != np.uint8:
            raise GbmrError(
                f"frame_stack={stack} needs uint8 observations stacked on their first axis, shape ({stack}, ...); "
                f"got {np.dtype(obs_dtype)} {tuple(obs_shape)} (set frame_stack to the stack size, or 0 to store "
                "whole observations)"
            )
        super().__init__((stack,), np.int32)
        self.frame_stack = stack
        self.capacity = capacity
        self.margin = num_envs * n_step * n_step
        pool = capacity + capacity // 8 + num_envs * (n_step * n_step + 2 * stack)
        self.frames = np.zeros((pool, *obs_shape[1:]), dtype=np.uint8)  # calloc: unused slots stay virtual
        self.last_use = np.full(pool, NEVER, dtype=np.int64)
        self.queue = np.zeros(pool, dtype=np.int32)  # ring of the used slots, oldest use first
        self.head = 0
        self.used = 0  # slots ever used: 0..used-1, all in the queue
        self.emitted = 0
        self.prev_keys = np.zeros((num_envs, stack), dtype=np.int32)  # each environment's last next_obs
        self.started = np.zeros(num_envs, dtype=bool)  # per environment: has it been added yet

    def encode(self, obs: np.ndarray, next_obs: np.ndarray, envs: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        obs, next_obs = np.asarray(obs), np.asarray(next_obs)
        rows = slice(None) if envs is None else envs
        prev, fresh = self.prev_keys[rows], ~self.started[rows]  # fresh: an environment's first add
        if envs is not None:  # a slice's previous stacks may be older than the pool's margin: keep them now
            self.hold(prev[~fresh])
        if fresh.any() and not fresh.all():  # environments whose first adds differ: each part on its own
            obs_keys = np.empty_like(prev)
            for part in (fresh, ~fresh):
                obs_keys[part] = self._keys_after(obs[part], prev[part], fresh[part])
        else:
            obs_keys = self._keys_after(obs, prev, fresh)
        next_keys = self._chain(next_obs, obs, obs_keys, np.zeros(len(obs), dtype=bool), True)
        self.last_use[obs_keys] = self.emitted
        self.last_use[next_keys] = self.emitted
        if envs is None:  # (obs_keys may be the old prev_keys)
            self.prev_keys = next_keys
        else:
            self.prev_keys[envs] = next_keys
        self.started[rows] = True
        return obs_keys, next_keys

    def _keys_after(self, obs: np.ndarray, prev: np.ndarray, fresh: np.ndarray) -> np.ndarray:
        """Keys of ``obs`` given each environment's previous ``next_obs`` keys (``fresh``: all or none has one)."""
        if fresh.all():
            return self._chain(obs, obs, prev, np.zeros(len(obs), dtype=bool), False)
        base = self.frames[prev]
        same = _rows_equal(obs, base)
        return prev if same.all() else self._chain(obs, base, prev, same, True)

    def hold(self, keys: np.ndarray) -> None:
        self.last_use[keys] = self.emitted

    def gather(self, obs_keys: np.ndarray, next_keys: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        both = self.frames[np.stack((obs_keys[slots], next_keys[slots]))]
        return both[0], both[1]

    def written(self, count: int) -> None:
        self.emitted += count

    def _chain(
        self, obs: np.ndarray, base: np.ndarray, base_keys: np.ndarray, same: np.ndarray, shift: bool
    ) -> np.ndarray:
        """Keys of ``obs``: rows marked ``same`` as their base take its key; if ``shift``, rows that are their base
        shifted by one frame take all but its oldest frame plus one new frame; the other rows are new frames."""
        shifted = np.zeros_like(same)
        if shift:
            if same.any():
                shifted[~same] = _rows_equal(obs[~same, :-1], base[~same, 1:])
            else:
                shifted = _rows_equal(obs[:, :-1], base[:, 1:])
            if shifted.all():  # the common step: one new frame per environment
                return np.concatenate((base_keys[:, 1:], self._store(obs[:, -1])[:, None]), axis=1)
        keys = np.empty_like(base_keys)
        keys[same] = base_keys[same]
        keys[shifted, :-1] = base_keys[shifted, 1:]
        new = ~(same | shifted)
        stored = np.zeros(obs.shape[:2], dtype=bool)  # the frames written, a frame equal to its left one shares it
        stored[shifted, -1] = True
        stored[new, 0] = True
        stored[new, 1:] = ~_rows_equal(obs[new, 1:], obs[new, :-1], axes=2)
        written = stored | new[:, None]  # frames with a slot of their own or sharing their left one's
        slots = self._store(obs[stored])
        keys[written] = slots[np.cumsum(stored[written]) - 1]
        return keys

    def _store(self, frames: np.ndarray) -> np.ndarray:
        """Write frames to free slots: the oldest used slots while they are free, then never used ones."""
        count, pool = len(frames), len(self.frames)
        oldest = self.queue.take(np.arange(self.head, self.head + min(count, self.used)), mode="wrap")
        free = self.last_use[oldest] <= self.emitted - self.capacity - self.margin
        slots = oldest if free.all() else oldest[: int(free.argmin())]
        new = count - len(slots)
        if new:
            if self.used + new > pool:
                self._grow(self.used + new)
                pool = len(self.frames)
            slots = np.concatenate((slots, np.arange(self.used, self.used + new, dtype=np.int32)))
        # The reused slots leave the front of the queue; all go to its back.
        self.queue.put(np.arange(self.head + self.used, self.head + self.used + count), slots, mode="wrap")
        self.head = (self.head + count - new) % pool
        self.used += new
        self.last_use[slots] = self.emitted
        self.frames[slots] = frames
        return slots

    def _grow(self, needed: int) -> None:
        """Reallocate the pool bigger (episodes much shorter than 8 steps); slots keep their numbers."""
        pool = max(needed, len(self.frames) + len(self.frames) // 8)
        frames = np.zeros((pool, *self.frames.shape[1:]), dtype=np.uint8)
        frames[: self.used] = self.frames[: self.used]
        last_use = np.full(pool, NEVER, dtype=np.int64)
        last_use[: self.used] = self.last_use[: self.used]
        queue = np.zeros(pool, dtype=np.int32)
        queue[: self.used] = self._queued()
        self.frames, self.last_use, self.queue, self.head = frames, last_use, queue, 0

    def _queued(self) -> np.ndarray:
        """The used slots, oldest use first."""
        return self.queue[(self.head + np.arange(self.used)) % len(self.queue)]

    @property
    def nbytes(self) -> int:
        """The frames in use and the per-slot bookkeeping: slots never used are never touched."""
        return self.used * (self.frames[0].nbytes + self.last_use.itemsize + self.queue.itemsize)

    def state_dict(self) -> dict[str, Any]:
        """Only the slots ever used: the pool's tail holds nothing."""
        used = slice(0, self.used)
        return {
            "pool": len(self.frames),
            "frames": self.frames[used],
            "last_use": self.last_use[used],
            "queue": self._queued(),
            "emitted": self.emitted,
            "prev_keys": self.prev_keys,
            "started": self.started,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.used = len(state["frames"])
        if int(state["pool"]) != len(self.frames):
            self.frames = np.zeros((int(state["pool"]), *self.frames.shape[1:]), dtype=np.uint8)
            self.queue = np.zeros(len(self.frames), dtype=np.int32)
        self.frames[: self.used] = state["frames"]
        self.last_use = np.full(len(self.frames), NEVER, dtype=np.int64)
        self.last_use[: self.used] = state["last_use"]
        self.queue[: self.used] = state["queue"]
        self.head = 0
        self.emitted = int(state["emitted"])
        self.prev_keys = state["prev_keys"].astype(np.int32)
        self.started = np.broadcast_to(np.asarray(state["started"], dtype=bool), self.started.shape).copy()


def _rows_equal(a: np.ndarray, b: np.ndarray, axes: int = 1) -> np.ndarray:
    """Whether ``a`` and ``b`` are equal over all but their first ``axes`` axes."""
    return (a == b).all(axis=tuple(range(axes, a.ndim)))


class ReplayBuffer:
    """Uniform n-step replay over a ring of ``capacity`` transitions.

    ``frame_stack > 0`` keeps observations in a ``FrameStore`` (uint8 stacks of that many frames on axis 0).
    """

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
        frame_stack: int = 0,
    ) -> None:
        if n_step < 1 or num_envs < 1:
            raise GbmrError(f"n_step and num_envs must be >= 1, got n_step={n_step}, num_envs={num_envs}")
        if capacity < num_envs * n_step:
            # One add can flush every window at once; it must fit without overwriting itself.
            raise GbmrError(f"replay capacity {capacity} must be >= num_envs * n_step = {num_envs * n_step}")
        if not 0.0 <= gamma <= 1.0:
            raise GbmrError(f"gamma must be in [0, 1], got {gamma}")
        if frame_stack < 0:
            raise GbmrError(f"frame_stack must be >= 0 (0 = whole observations), got {frame_stack}")
        self.capacity = capacity
        self.obs_shape = tuple(obs_shape)
        self.num_envs = num_envs
        self.n_step = n_step
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        self.store = (
            FrameStore(frame_stack, capacity, self.obs_shape, obs_dtype, num_envs, n_step)
            if frame_stack
            else ObservationStore(self.obs_shape, obs_dtype)
        )
        key_shape, key_dtype = self.store.key_shape, self.store.key_dtype

        # Keys of the observations (the observations themselves unless frames are shared).
        self.obs = np.zeros((capacity, *key_shape), dtype=key_dtype)
        self.next_obs = np.zeros((capacity, *key_shape), dtype=key_dtype)  # calloc: pages stay lazy
        self.actions = np.zeros((capacity, *action_shape), dtype=action_dtype)
        self.returns = np.zeros(capacity, dtype=np.float32)
        self.discounts = np.zeros(capacity, dtype=np.float32)
        self.ptr = 0  # next slot to write
        self.size = 0

        # Pending n-step windows: a ring of n_step columns per environment; a step goes to its column
        # win_slot[e]; an environment's pending steps are its last win_count[e]. In one process every environment
        # steps on every add, so all positions are equal; an async actor's slice advances only its own.
        self.win_obs = np.zeros((num_envs, n_step, *key_shape), dtype=key_dtype)
        self.win_actions = np.zeros((num_envs, n_step, *action_shape), dtype=action_dtype)
        self.win_rewards = np.zeros((num_envs, n_step), dtype=np.float64)
        self.win_count = np.zeros(num_envs, dtype=np.int64)
        self.win_slot = np.zeros(num_envs, dtype=np.int64)
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
        envs: np.ndarray | None = None,
    ) -> None:
        """Record one vector step; ``next_obs`` is the true final observation for environments that ended.

        ``envs``: the environments the rows are when only they stepped (an async actor's slice, added on its own);
        None: every environment, in order."""
        n = self.n_step
        if envs is not None and n > 1:  # the other environments' pending windows wait while this slice's emit
            env, age = np.nonzero(self._k < self.win_count[:, None])
            self.store.hold(self.win_obs[env, (self.win_slot[env] - 1 - age) % n])
        obs, next_obs = self.store.encode(obs, next_obs, envs)
        terminated = np.asarray(terminated, dtype=bool)
        if n == 1:  # every step is a whole window: store it as it comes, in environment order
            discounts = np.where(terminated, 0.0, self.gamma)
            self._write(obs, actions, rewards, next_obs, discounts)
            return
        rows = np.arange(self.num_envs) if envs is None else np.asarray(envs)
        columns = self.win_slot[rows]
        self.win_obs[rows, columns] = obs
        self.win_actions[rows, columns] = actions
        self.win_rewards[rows, columns] = rewards
        self.win_slot[rows] = (columns + 1) % n
        self.win_count[rows] += 1
        done = terminated | np.asarray(truncated, dtype=bool)
        if done.any():
            emit, columns, returns, discounts = self._flush(rows, done, terminated)
        else:  # the common step: each full window emits its oldest step, which sits in column win_slot
            emit = np.flatnonzero(self.win_count[rows] == n)
            columns = self.win_slot[rows[emit]]
            returns = np.einsum("ij,ij->i", self.win_rewards[rows[emit]], self._full_window_weights[columns])
            discounts = self.gamma**n
            self.win_count[rows[emit]] -= 1
        if emit.size:
            env_idx = rows[emit]
            self._write(self.win_obs[env_idx, columns], self.win_actions[env_idx, columns], returns,
                        np.asarray(next_obs)[emit], discounts)

    def _flush(
        self, rows: np.ndarray, done: np.ndarray, terminated: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Ended episodes emit all their pending steps with shorter sums; other full windows their oldest.

        Works on (row, time position) grids of the environments ``rows``; returns the emitted (row, column,
        return, discount) entries.
        """
        k, n = self._k, self.n_step
        count = self.win_count[rows]
        age = count[:, None] - k  # steps from time position k to the newest, inclusive
        columns = (self.win_slot[rows][:, None] - age) % n
        pending = age > 0
        emit = pending & (done[:, None] | ((count == n)[:, None] & (k == 0)))
        rewards = np.where(pending, np.take_along_axis(self.win_rewards[rows], columns, axis=1), 0.0)
        returns = rewards @ self._discount_matrix.T
        discounts = np.where(terminated[:, None], 0.0, self.gamma ** np.maximum(age, 0))
        self.win_count[rows] = np.where(done, 0, np.minimum(count, n - 1))
        row_idx, pos = np.nonzero(emit)
        return row_idx, columns[row_idx, pos], returns[row_idx, pos], discounts[row_idx, pos]

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
        self.store.written(count)
        self._on_write(slots)

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer")
        return self.transitions(*self._sample_indices(batch_size))

    def transitions(self, indices: np.ndarray, weights: np.ndarray | None = None) -> Batch:
        """The transitions in the given slots (weights default to ones), as ``sample`` returns them."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and not 0 <= indices.min() <= indices.max() < self.size:
            raise IndexError(f"replay slots must be in [0, {self.size})")
        obs, next_obs = self.store.gather(self.obs, self.next_obs, indices)
        return Batch(
            obs=obs,
            actions=self.actions[indices],
            returns=self.returns[indices],
            next_obs=next_obs,
            discounts=self.discounts[indices],
            indices=indices,
            weights=np.ones(len(indices), dtype=np.float32) if weights is None else weights,
        )

    @property
    def nbytes(self) -> int:
        """Bytes of the per-slot arrays plus what the observation store holds (the frames in use), windows and
        priorities aside."""
        arrays = (self.obs, self.next_obs, self.actions, self.returns, self.discounts)
        return sum(a.nbytes for a in arrays) + self.store.nbytes

    def _sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.rng.integers(0, self.size, size=batch_size, dtype=np.int64)
        return indices, np.ones(batch_size, dtype=np.float32)

    def _on_write(self, slots: np.ndarray) -> None:
        """Hook for subclasses that track per-slot data (priorities)."""

    def state_dict(self) -> dict[str, Any]:
        """Filled storage, pointers, pending n-step windows, observation store and RNG, as tensors and plain values.

        Like ``nn.Module.state_dict`` the tensors share memory with the buffer (copying gigabytes of frames
        per checkpoint would hurt): save it before adding more.
        """
        stored = slice(0, self.size)
        return to_saveable(
            {
                "capacity": self.capacity,
                "num_envs": self.num_envs,
                "n_step": self.n_step,
                "frame_stack": self.store.frame_stack,
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
                "store": self.store.state_dict(),
                "rng": rng_state(self.rng),
            }
        )

    def load_state_dict(self, state: dict[str, Any]) -> None:
        state = to_numpy(state)
        layout = {
            "capacity": self.capacity,
            "num_envs": self.num_envs,
            "n_step": self.n_step,
            "frame_stack": self.store.frame_stack,
        }
        saved = {key: state.get(key, 0) for key in layout}  # checkpoints before frame sharing lack frame_stack
        if saved != layout:
            raise GbmrError(f"replay state of {saved} does not fit this buffer ({layout})")
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        for name in ("obs", "next_obs", "actions", "returns", "discounts"):
            getattr(self, name)[: self.size] = state[name]
        for name in ("win_obs", "win_actions", "win_rewards", "win_count", "win_slot"):
            getattr(self, name)[...] = state[name]  # a scalar win_slot (saved before slices) fills every env
        self.store.load_state_dict(state.get("store", {}))
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
        frame_stack: int = 0,
    ) -> None:
        super().__init__(
            capacity, obs_shape, obs_dtype, action_shape, action_dtype, num_envs, n_step, gamma, seed, frame_stack
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
