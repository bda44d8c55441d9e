"""NEC's differentiable neural dictionary and MFEC's episodic table, both on ``KeyIndex``.

Both are fixed-capacity tables of (key, value) entries in slots with a merge-or-insert write: a written
key (near-)identical to a stored one (squared distance < ``match_threshold``) merges into that entry, any
other key takes a fresh slot, evicting the least recently used entry once the table is full (lookups and
writes count as use). They differ in how they merge and read:

- ``DND`` (NEC, Pritzel et al. 2017): merge ``Q_i += alpha (R - Q_i)``; read the kernel-weighted mean of the k
  nearest values, ``w_i = 1 / (||h - h_i||^2 + delta)``, differentiable with respect to the query and to the
  keys and values of the neighbours used.
- ``EpisodicTable`` (MFEC, Blundell et al. 2016): merge keeps ``max(Q_i, R)``; read the exact match's value,
  else the mean of the k nearest values.

Entries are never removed, only overwritten, so slots ``[0, size)`` are exactly the filled ones.

``ActionDNDs`` holds NEC's DNDs (one per action) on stacked storage, for batched reads across actions, the SGD
step on the neighbours as a scatter and one re-index of the moved keys.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import torch

from gbmr.memory.kernel import kernel_lookup
from gbmr.memory.knn import ExactIndexStack, KeyIndex, as_array, make_index, resolve_kind

WRITE_CHUNK = 1024  # keys deduplicated against each other per pass: a [chunk, chunk] distance matrix


class _SlotTable(ABC):
    """Slots, LRU clock and the merge-or-insert write shared by the DND and the MFEC table."""

    def __init__(self, capacity: int, dim: int, k: int, index: str | KeyIndex, device: torch.device | str | None,
                 match_threshold: float, index_options: dict[str, Any]):
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        self.capacity, self.dim, self.k = int(capacity), int(dim), int(k)
        self.device = torch.device(device or "cpu")
        self.match_threshold = match_threshold
        self.index = (index if isinstance(index, KeyIndex)
                      else make_index(index, capacity, dim, device=self.device, **index_options))
        self.size = 0
        self.clock = 0  # ticks once per lookup call and once per written pair
        self.last_use = np.zeros(self.capacity, dtype=np.int64)

    # --- what a table implements ---------------------------------------------------------------------------
    @abstractmethod
    def _merge(self, slots: np.ndarray, returns: np.ndarray) -> None:
        """Fold one return into each of the distinct stored ``slots``."""

    @abstractmethod
    def _store(self, slots: np.ndarray, keys: np.ndarray, returns: np.ndarray) -> None:
        """Set new entries (the index is updated by the caller)."""

    @abstractmethod
    def _entries(self) -> dict[str, torch.Tensor]:
        """What the table holds of slots ``[0, size)`` beside the index, as CPU tensors."""

    @abstractmethod
    def _load_entries(self, entries: dict[str, torch.Tensor]) -> None:
        """Restore slots ``[0, size)`` from ``_entries``' tensors (the index is restored by the caller)."""

    # --- shared --------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.size

    def _touch(self, slots: np.ndarray) -> None:
        self.clock += 1
        self.last_use[slots[slots >= 0]] = self.clock

    def write(self, keys: np.ndarray | torch.Tensor, returns: np.ndarray | torch.Tensor) -> None:
        """Merge each (key, return) into its (near-)identical entry, else insert it (LRU eviction when full).

        Equivalent to writing the pairs one after another: a key repeated within the batch merges into the
        entry its first occurrence created or matched.
        """
        keys = as_array(keys, np.float32).reshape(-1, self.dim)
        returns = as_array(returns, np.float32).reshape(-1)
        if len(keys) != len(returns):
            raise ValueError(f"{len(keys)} keys but {len(returns)} returns")
        times = self.clock + 1 + np.arange(len(keys))  # one tick per pair: LRU order as if written in turn
        self.clock += len(keys)
        chunk = min(WRITE_CHUNK, self.capacity)
        for start in range(0, len(keys), chunk):
            pending = np.arange(start, min(start + chunk, len(keys)))
            while pending.size:
                pending = self._write_pass(keys, returns, times, pending)

    def _write_pass(self, keys: np.ndarray, returns: np.ndarray, times: np.ndarray,
                    pending: np.ndarray) -> np.ndarray:
        """Merge or insert every pending pair that can go now; return those that must wait for a later pass
        (a second write to an entry touched in this pass has to see the first)."""
        dist, slot = self.index.search(keys[pending], 1)
        matched = dist[:, 0] < self.match_threshold
        done = np.zeros(pending.size, dtype=bool)

        hit = np.flatnonzero(matched)
        targets, first = np.unique(slot[hit, 0], return_index=True)
        if targets.size:
            self._merge(targets, returns[pending[hit[first]]])
            self.last_use[targets] = times[pending[hit[first]]]
            done[hit[first]] = True

        new = np.flatnonzero(~matched)
        if new.size:
            k64 = keys[pending[new]].astype(np.float64)  # float64: the matmul form must see duplicates as 0
            sq = (k64 * k64).sum(1)
            d2 = sq[:, None] + sq[None, :] - 2.0 * (k64 @ k64.T)
            duplicate = np.tril(d2 < self.match_threshold, -1).any(1)  # of an earlier new key: wait
            leaders = pending[new[~duplicate]]
            slots = self._allocate(leaders.size)
            self._store(slots, keys[leaders], returns[leaders])
            self.index.add(slots, keys[leaders])
            self.last_use[slots] = times[leaders]
            done[new[~duplicate]] = True
        return pending[~done]

    def _allocate(self, n: int) -> np.ndarray:
        """``n <= capacity`` distinct slots: unused ones first, then the least recently used entries (the
        caller sets their use times)."""
        fresh = np.arange(self.size, min(self.size + n, self.capacity))
        self.size += fresh.size
        self.last_use[fresh] = np.iinfo(np.int64).max  # never evict what this pass just took
        evict = n - fresh.size
        if evict == 1:  # the common per-step write: argmin is ~25x cheaper than argpartition at 5e5
            fresh = np.concatenate([fresh, [np.argmin(self.last_use)]])
        elif evict:
            lru = np.argpartition(self.last_use, evict - 1)[:evict]
            lru = lru[np.argsort(self.last_use[lru], kind="stable")]  # i-th new key evicts the i-th oldest
            fresh = np.concatenate([fresh, lru])
        return fresh

    def state_dict(self) -> dict[str, Any]:
        """Filled entries, use times, clock and the index's own state (for HNSW its graph, so that a loaded
        table chooses the same neighbours and grows its index as the saved one)."""
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "size": self.size,
            "clock": self.clock,
            "last_use": torch.from_numpy(self.last_use[: self.size].copy()),
            "index": self.index.state_dict(),
            **self._entries(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["capacity"], state["dim"]) != (self.capacity, self.dim):
            raise ValueError(
                f"table state is for capacity {state['capacity']}, dim {state['dim']}; "
                f"this table has {self.capacity}, {self.dim}"
            )
        self.size, self.clock = int(state["size"]), int(state["clock"])
        self.last_use[:] = 0
        self.last_use[: self.size] = state["last_use"].numpy()
        self._load_entries(state)
        self.index.load_state_dict(state["index"])


class DND(_SlotTable):
    """One per action. ``keys`` ``[capacity, dim]`` and ``values`` ``[capacity]`` are ``nn.Parameter``s: a
    loss on ``lookup`` back-propagates into the query and the neighbours' keys and values only.

    With ``sparse_grad`` (default) their gradients are sparse, touching only the rows used -- a dense gradient
    over 5e5 x 64 keys per action per learner step would dominate NEC's cost. Sparse gradients need an
    optimiser that takes them (``torch.optim.SGD``, ``SparseAdam``, ``Adagrad``; RMSprop does not): give the
    DND its own optimiser, or pass ``sparse_grad=False``. After an optimiser step call
    ``refresh_index(slots)`` so the index sees the moved keys.
    """

    def __init__(self, capacity: int, dim: int, k: int = 50, delta: float = 1e-3, alpha: float = 0.1,
                 index: str | KeyIndex = "auto", device: torch.device | str | None = None,
                 match_threshold: float = 1e-6, sparse_grad: bool = True,
                 storage: tuple[torch.Tensor, torch.Tensor] | None = None, **index_options: Any):
        super().__init__(capacity, dim, k, index, device, match_threshold, index_options)
        self.delta, self.alpha, self.sparse_grad = delta, alpha, sparse_grad
        if storage is None:  # else zero ([capacity, dim] keys, [capacity] values) views of ActionDNDs' stacks
            storage = (torch.zeros(self.capacity, self.dim, device=self.device),
                       torch.zeros(self.capacity, device=self.device))
        self.keys, self.values = (torch.nn.Parameter(t) for t in storage)  # the parameters alias the storage

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.keys, self.values]

    def lookup(self, queries: torch.Tensor) -> torch.Tensor:
        """Q ``[B]``: kernel-weighted mean of the k nearest values (fewer if fewer stored; 0 if empty)."""
        return self.lookup_with_neighbours(queries)[0]

    def lookup_with_neighbours(
        self, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Q ``[B]``, neighbour slots ``[B, k]`` int64 with -1 for none, normalised weights ``[B, k]``)."""
        q = torch.as_tensor(queries, dtype=torch.float32, device=self.device)
        _, slots = self.index.search(q.detach(), self.k)
        self._touch(slots)
        slots = torch.from_numpy(slots).to(self.device)
        valid = slots >= 0
        flat = slots.clamp(min=0).reshape(-1)
        keys = torch.gather(self.keys, 0, flat[:, None].expand(-1, self.dim), sparse_grad=self.sparse_grad)
        values = torch.gather(self.values, 0, flat, sparse_grad=self.sparse_grad).view(slots.shape)
        out, weights = kernel_lookup(q, keys.view(*slots.shape, self.dim), values, valid, self.delta)
        return out, slots, weights

    def refresh_index(self, slots: np.ndarray | torch.Tensor, tolerance: float = 0.0) -> None:
        """Re-add the (optimiser-moved) keys of ``slots`` to the index; -1 entries are ignored.

        Keys whose squared move since they were indexed is at most ``tolerance`` are skipped: an HNSW update
        costs ~0.3-0.5 ms a key, and a learner step at NEC's small learning rate barely moves them (the
        kernel always uses the current keys; only the choice of neighbours sees the indexed ones).
        """
        slots = np.unique(as_array(slots, np.int64))
        slots = slots[slots >= 0]
        keys = self.keys.detach()[torch.from_numpy(slots).to(self.device)].cpu().numpy()
        if tolerance > 0.0:
            moved = ((keys - self.index.get(slots)) ** 2).sum(1) > tolerance
            slots, keys = slots[moved], keys[moved]
        self.index.add(slots, keys)

    @torch.no_grad()
    def _merge(self, slots: np.ndarray, returns: np.ndarray) -> None:
        s = torch.from_numpy(slots).to(self.device)
        self.values[s] += self.alpha * (torch.from_numpy(returns).to(self.device) - self.values[s])

    @torch.no_grad()
    def _store(self, slots: np.ndarray, keys: np.ndarray, returns: np.ndarray) -> None:
        s = torch.from_numpy(slots).to(self.device)
        self.keys[s] = torch.from_numpy(keys).to(self.device)
        self.values[s] = torch.from_numpy(returns).to(self.device)

    def _entries(self) -> dict[str, torch.Tensor]:
        """The current keys (the index holds them as last indexed: within ``refresh_index``'s tolerance)."""
        return {"keys": self.keys.detach()[: self.size].cpu().clone(),
                "values": self.values.detach()[: self.size].cpu().clone()}

    @torch.no_grad()
    def _load_entries(self, entries: dict[str, torch.Tensor]) -> None:
        self.keys.zero_()
        self.values.zero_()
        self.keys[: self.size] = entries["keys"].to(self.device)
        self.values[: self.size] = entries["values"].to(self.device)


class DNDRead(NamedTuple):
    """A batch read of ``ActionDNDs``: Q ``[B]``, the neighbours' flat rows ``[B, k]`` (``action * capacity +
    slot``, -1 for none) and, for a learner step, the gathered keys ``[B, k, dim]`` and values ``[B, k]`` as
    leaves that collect the loss's gradient (None for a read without gradient)."""

    q: torch.Tensor
    rows: torch.Tensor
    keys: torch.Tensor | None
    values: torch.Tensor | None


class ActionDNDs:
    """NEC's DNDs, one per action, over stacked ``keys [A, capacity, dim]`` and ``values [A, capacity]``.

    Each ``dnds[a]`` (also ``self[a]``) is a full ``DND`` -- write, LRU, checkpoint -- on views of the stacks.
    The stacks serve NEC's hot path: reading every action of a query is one search (exact index: one
    ``ExactIndexStack``) and one kernel call; a learner batch reads its rows' DNDs, takes the SGD step on the
    neighbours' keys and values as one ``index_add_`` of their gradients (what ``torch.optim.SGD`` does with
    the DND's sparse gradients, without building sparse tensors) and re-indexes the moved keys in one go.
    Lookups tick the clock of every DND they read once, as ``DND.lookup`` does.
    """

    def __init__(self, num_actions: int, capacity: int, dim: int, k: int = 50, delta: float = 1e-3,
                 alpha: float = 0.1, index: str = "auto", device: torch.device | str | None = None,
                 match_threshold: float = 1e-6, **index_options: Any):
        self.device = torch.device(device or "cpu")
        self.capacity, self.dim, self.k, self.delta = int(capacity), int(dim), int(k), delta
        self.keys = torch.zeros(num_actions, self.capacity, self.dim, device=self.device)
        self.values = torch.zeros(num_actions, self.capacity, device=self.device)
        kind = resolve_kind(index, self.capacity)
        self.stack = ExactIndexStack(num_actions, self.capacity, self.dim, self.device) if kind == "exact" else None
        indexes = self.stack.tables if self.stack is not None else [kind] * num_actions
        self.dnds = [DND(self.capacity, self.dim, k=k, delta=delta, alpha=alpha, index=indexes[a],
                         device=self.device, match_threshold=match_threshold,
                         storage=(self.keys[a], self.values[a]), **index_options)
                     for a in range(num_actions)]

    def __len__(self) -> int:
        return len(self.dnds)

    def __getitem__(self, action: int) -> DND:
        return self.dnds[action]

    def __iter__(self) -> Iterator[DND]:
        return iter(self.dnds)

    def _touch(self, action: int, slots: torch.Tensor) -> None:
        self.dnds[action]._touch(slots.cpu().numpy())

    def _gather(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = rows.clamp(min=0).reshape(-1)
        keys = self.keys.view(-1, self.dim).index_select(0, flat).view(*rows.shape, self.dim)
        return keys, self.values.view(-1).index_select(0, flat).view(rows.shape)

    @torch.no_grad()
    def q_values(self, queries: torch.Tensor) -> torch.Tensor:
        """Q ``[B, A]``: every action's kernel lookup of each query."""
        num_actions = len(self.dnds)
        if self.stack is not None:
            slots = self.stack.nearest_slots(queries, self.k)  # [B, A, k]
        else:
            slots = torch.stack([torch.from_numpy(dnd.index.search(queries, self.k)[1]).to(self.device)
                                 for dnd in self.dnds], dim=1)
        for a in range(num_actions):
            self._touch(a, slots[:, a])
        offsets = torch.arange(num_actions, device=self.device)[:, None] * self.capacity
        rows = torch.where(slots >= 0, slots + offsets, -1)
        keys, values = self._gather(rows)
        return kernel_lookup(queries[:, None, :], keys, values, rows >= 0, self.delta)[0]

    def read(self, queries: torch.Tensor, actions: np.ndarray, grad: bool = False) -> DNDRead:
        """Q ``[B]`` of each query in its action's DND; with ``grad`` the loss on Q back-propagates into
        ``queries`` and into the returned neighbour keys and values (for ``sgd_step``)."""
        rows = torch.empty(len(actions), self.k, dtype=torch.int64, device=self.device)
        with torch.no_grad():
            for a in np.unique(actions):
                index = torch.from_numpy(np.flatnonzero(actions == a)).to(self.device)
                dnd = self.dnds[a]
                if self.stack is not None:
                    slots = dnd.index.nearest_slots(queries.detach()[index], self.k)
                else:
                    slots = torch.from_numpy(dnd.index.search(queries.detach()[index], self.k)[1]).to(self.device)
                self._touch(int(a), slots)
                rows[index] = torch.where(slots >= 0, slots + int(a) * self.capacity, -1)
        keys, values = self._gather(rows)
        if grad:
            keys.requires_grad_(True)
            values.requires_grad_(True)
        q = kernel_lookup(queries, keys, values, rows >= 0, self.delta)[0]
        return DNDRead(q, rows, keys if grad else None, values if grad else None)

    @torch.no_grad()
    def sgd_step(self, read: DNDRead, lr: float) -> None:
        """Plain SGD on the keys and values of the neighbours of a ``read(..., grad=True)`` whose loss has
        been back-propagated (a neighbour used twice gets both gradients)."""
        valid = read.rows >= 0
        rows = read.rows[valid]
        self.keys.view(-1, self.dim).index_add_(0, rows, read.keys.grad[valid], alpha=-lr)
        self.values.view(-1).index_add_(0, rows, read.values.grad[valid], alpha=-lr)

    @torch.no_grad()
    def refresh_index(self, rows: torch.Tensor, tolerance: float = 0.0) -> None:
        """Re-index the keys of flat ``rows`` (-1 ignored) that moved more than ``tolerance`` (squared)
        since they were indexed (``DND.refresh_index`` for all actions at once)."""
        rows = torch.unique(rows[rows >= 0])
        if self.stack is None:
            for a in torch.unique(rows // self.capacity).tolist():
                self.dnds[a].refresh_index(rows[rows // self.capacity == a] % self.capacity, tolerance)
            return
        keys = self.keys.view(-1, self.dim)[rows]
        if tolerance > 0.0:
            moved = (keys - self.stack.indexed_keys(rows)).square().sum(1) > tolerance
            rows, keys = rows[moved], keys[moved]
        self.stack.replace(rows, keys)


class EpisodicTable(_SlotTable):
    """MFEC's per-action table: the best return seen from a state, and k-NN averaging for unseen states.
    Keys live only in the index; values are a numpy array (MFEC learns nothing by gradient)."""

    def __init__(self, capacity: int, dim: int, k: int = 11, index: str = "auto",
                 device: torch.device | str | None = None, match_threshold: float = 1e-6,
                 **index_options: Any):
        super().__init__(capacity, dim, k, index, device, match_threshold, index_options)
        self.values = np.zeros(self.capacity, dtype=np.float32)

    def lookup(self, queries: np.ndarray | torch.Tensor) -> np.ndarray:
        """Q ``[B]``: the exact match's value, else the mean of the k nearest values (0 when empty)."""
        dist, slots = self.index.search(queries, self.k)
        self._touch(slots)
        valid = slots >= 0
        values = np.where(valid, self.values[np.maximum(slots, 0)], 0.0)
        mean = values.sum(1) / np.maximum(valid.sum(1), 1)
        return np.where(dist[:, 0] < self.match_threshold, values[:, 0], mean).astype(np.float32)

    def _merge(self, slots: np.ndarray, returns: np.ndarray) -> None:
        self.values[slots] = np.maximum(self.values[slots], returns)

    def _store(self, slots: np.ndarray, keys: np.ndarray, returns: np.ndarray) -> None:
        self.values[slots] = returns

    def _entries(self) -> dict[str, torch.Tensor]:
        return {"values": torch.from_numpy(self.values[: self.size].copy())}  # the keys are the index's

    def _load_entries(self, entries: dict[str, torch.Tensor]) -> None:
        self.values[:] = 0.0
        self.values[: self.size] = entries["values"].numpy()
