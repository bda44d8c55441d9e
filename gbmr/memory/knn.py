"""Nearest-neighbour search over float32 keys held in fixed slots ``[0, capacity)``.

Episodic memories (MFEC tables, NEC's DND, the memory graph) address their entries by slot: a slot is written,
overwritten when its entry is merged or evicted, and searched by key. ``KeyIndex`` is that one interface, with
two backends chosen by size:

- ``ExactIndex``: torch brute force (one matmul + topk per query chunk) over a preallocated
  ``[capacity, dim]`` tensor; exact, batched, on the GPU when given a CUDA device; fine up to ~1e5 keys.
- ``HNSWIndex``: hnswlib's graph index, updated in place (a written slot is inserted or moved, a removed slot
  is marked deleted), never rebuilt per write -- the classic slowness of public NEC code.

Squared Euclidean distances throughout, as the episodic kernels use them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

import hnswlib
import numpy as np
import torch

from gbmr.core.errors import unknown_choice

INDEX_KINDS = ("exact", "hnsw", "auto")
AUTO_HNSW_CAPACITY = 100_000  # "auto" switches to HNSW here: brute force costs ~3 ms per query at 1e5 keys


def as_array(x: np.ndarray | torch.Tensor, dtype: type) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x, dtype=dtype)


class KeyIndex(ABC):
    """k-NN over keys in slots ``[0, capacity)``; writing a slot that holds a key replaces (moves) it."""

    def __init__(self, capacity: int, dim: int):
        if capacity <= 0 or dim <= 0:
            raise ValueError(f"capacity and dim must be positive, got {capacity}, {dim}")
        self.capacity = int(capacity)
        self.dim = int(dim)
        self._alive = np.zeros(self.capacity, dtype=bool)
        self._n = 0

    # --- what a backend implements -------------------------------------------------------------------------
    @abstractmethod
    def _add(self, slots: np.ndarray, keys: np.ndarray) -> None:
        """Write distinct ``slots`` (some may already hold keys: overwrite them)."""

    @abstractmethod
    def _remove(self, slots: np.ndarray) -> None:
        """Forget distinct slots that hold keys."""

    @abstractmethod
    def _search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN for ``1 <= k <= len(self)``; every returned slot is alive."""

    @abstractmethod
    def get(self, slots: np.ndarray) -> np.ndarray:
        """The stored keys of alive ``slots`` as float32 ``[n, dim]``."""

    @abstractmethod
    def _clear(self) -> None:
        """Forget every key (the backend's part)."""

    # --- the shared contract -------------------------------------------------------------------------------
    def _check_slots(self, slots: np.ndarray | torch.Tensor) -> np.ndarray:
        slots = as_array(slots, np.int64).reshape(-1)
        if slots.size and (slots.min() < 0 or slots.max() >= self.capacity):
            raise IndexError(f"slots must lie in [0, {self.capacity}), got [{slots.min()}, {slots.max()}]")
        return slots

    def add(self, slots: np.ndarray | torch.Tensor, keys: np.ndarray | torch.Tensor) -> None:
        """Write ``keys[i]`` into ``slots[i]`` (insert, or move a stored key); a repeated slot: last wins."""
        slots = self._check_slots(slots)
        keys = as_array(keys, np.float32)
        if keys.shape != (slots.size, self.dim):
            raise ValueError(f"keys must have shape ({slots.size}, {self.dim}), got {keys.shape}")
        if slots.size == 0:
            return
        _, last_from_end = np.unique(slots[::-1], return_index=True)
        keep = slots.size - 1 - last_from_end
        slots, keys = slots[keep], keys[keep]
        self._add(slots, keys)
        self._n += int((~self._alive[slots]).sum())
        self._alive[slots] = True

    def remove(self, slots: np.ndarray | torch.Tensor) -> None:
        """Forget the keys in ``slots``; empty slots are ignored."""
        slots = np.unique(self._check_slots(slots))
        slots = slots[self._alive[slots]]
        if slots.size == 0:
            return
        self._remove(slots)
        self._alive[slots] = False
        self._n -= slots.size

    def search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest stored keys of each query, nearest first.

        Returns (squared distances ``[B, k]`` float32, slots ``[B, k]`` int64); when fewer than ``k`` keys
        are stored the tail is padded with distance ``inf`` and slot ``-1``. ``queries`` may be a torch tensor
        (the exact backend then stays on its device).
        """
        if k <= 0:
            raise ValueError(f"k must be positive, got {k}")
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must have shape (B, {self.dim}), got {tuple(queries.shape)}")
        b = queries.shape[0]
        dist = np.full((b, k), np.inf, dtype=np.float32)
        slots = np.full((b, k), -1, dtype=np.int64)
        kk = min(k, self._n)
        if kk and b:
            dist[:, :kk], slots[:, :kk] = self._search(queries, kk)
        return dist, slots

    def clear(self) -> None:
        """Forget every key."""
        self._clear()
        self._alive[:] = False
        self._n = 0

    @property
    def alive(self) -> np.ndarray:
        """Read-only mask of the slots holding a key."""
        view = self._alive.view()
        view.flags.writeable = False
        return view

    def __len__(self) -> int:
        return self._n

    def state_dict(self) -> dict[str, Any]:
        """The alive slots and their keys -- backend-neutral, so a checkpoint loads into either backend."""
        slots = np.flatnonzero(self._alive)
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "slots": torch.from_numpy(slots),
            "keys": torch.from_numpy(self.get(slots)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["capacity"], state["dim"]) != (self.capacity, self.dim):
            raise ValueError(
                f"index state is for capacity {state['capacity']}, dim {state['dim']}; "
                f"this index has {self.capacity}, {self.dim}"
            )
        self.clear()
        self.add(state["slots"], state["keys"])


class ExactIndex(KeyIndex):
    """Brute force: ``||k||^2 - 2 q.k`` by one matmul into a reused buffer, topk, then the k winners'
    distances recomputed as ``||q - k||^2`` so that identical keys read exactly 0 (the matmul form loses that
    to cancellation, and exact-match tests in MFEC/NEC depend on it)."""

    def __init__(self, capacity: int, dim: int, device: torch.device | str | None = None,
                 chunk_elements: int = 1 << 23, storage: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__(capacity, dim)
        self.device = torch.device(device or "cpu")
        if storage is None:  # else ([capacity, dim] keys, [capacity] squared norms) owned by an ExactIndexStack
            storage = (torch.zeros(self.capacity, self.dim, device=self.device),
                       torch.full((self.capacity,), float("inf"), device=self.device))
        self._keys, self._sqnorm = storage  # sqnorm inf = empty slot
        self._hi = 0  # one past the last alive slot: only [0, hi) is scanned
        self._chunk_elements = chunk_elements  # size of the score buffer (queries x scanned slots)
        self._buffer = torch.empty(0, device=self.device)

    def _add(self, slots: np.ndarray, keys: np.ndarray) -> None:
        s = torch.from_numpy(slots).to(self.device)
        k = torch.from_numpy(keys).to(self.device)
        self._keys[s] = k
        self._sqnorm[s] = (k * k).sum(1)
        self._hi = max(self._hi, int(slots.max()) + 1)

    def _remove(self, slots: np.ndarray) -> None:
        self._sqnorm[torch.from_numpy(slots).to(self.device)] = float("inf")
        if slots.max() + 1 < self._hi:
            return
        still = self._alive.copy()
        still[slots] = False
        alive_slots = np.flatnonzero(still)
        self._hi = int(alive_slots[-1]) + 1 if alive_slots.size else 0

    def _candidates(self, q: torch.Tensor, k: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per chunk of queries: (the chunk, slots of its k lowest ``||k||^2 - 2 q.k`` scores, unordered)."""
        keys, sqnorm, hi = self._keys[: self._hi], self._sqnorm[: self._hi], self._hi
        rows = max(1, self._chunk_elements // hi)
        if self._buffer.numel() < min(rows, q.shape[0]) * hi:
            self._buffer = torch.empty(min(rows, q.shape[0]) * hi, device=self.device)
        for start in range(0, q.shape[0], rows):
            qc = q[start : start + rows]
            scores = self._buffer[: qc.shape[0] * hi].view(qc.shape[0], hi)
            torch.addmm(sqnorm, qc, keys.T, alpha=-2.0, out=scores)  # empty slots stay inf, so never chosen
            yield qc, scores.topk(k, dim=1, largest=False, sorted=False).indices

    def _search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = torch.as_tensor(queries, dtype=torch.float32).to(self.device)
        out_d, out_s = [], []
        for qc, idx in self._candidates(q, k):
            dist = (qc[:, None, :] - self._keys[idx]).square().sum(-1)
            dist, order = dist.sort(dim=1)
            out_d.append(dist)
            out_s.append(idx.gather(1, order))
        return torch.cat(out_d).cpu().numpy(), torch.cat(out_s).cpu().numpy().astype(np.int64)

    def nearest_slots(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Slots ``[B, k]`` (int64 tensor on the index's device) of the k nearest keys, in no particular order,
        -1 past the stored count: ``search`` without the exact re-rank and the copies to numpy, for reads that
        weigh their k neighbours alike (a kernel sum does not care about their order)."""
        out = torch.full((queries.shape[0], k), -1, dtype=torch.int64, device=self.device)
        kk = min(k, self._n)
        if kk and queries.shape[0]:
            out[:, :kk] = torch.cat([idx for _, idx in self._candidates(queries.to(self.device), kk)])
        return out

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self._keys[torch.from_numpy(np.asarray(slots, dtype=np.int64)).to(self.device)].cpu().numpy()

    def _clear(self) -> None:
        self._sqnorm.fill_(float("inf"))
        self._hi = 0


class HNSWIndex(KeyIndex):
    """hnswlib HNSW graph whose labels are the slots: ``add`` of a stored slot moves its key in place
    (hnswlib ``updatePoint``), ``remove`` marks it deleted, and re-adding a deleted slot revives it. The graph
    never holds more than ``capacity`` points, so no rebuild is ever needed.

    Adds run on ``add_threads`` threads (1 = the same graph for the same writes, hence reproducible runs);
    queries use every core (results do not depend on it). Recall grows with ``ef_search`` (>= k is used).
    The keys are mirrored in a numpy array, so ``get`` is a take (hnswlib's ``get_items`` costs ~8 us a key), at
    the price of ``capacity x dim`` float32 beside hnswlib's own copy.
    """

    def __init__(self, capacity: int, dim: int, M: int = 16, ef_construction: int = 100,
                 ef_search: int = 128, add_threads: int = 1, seed: int = 0):
        super().__init__(capacity, dim)
        self.M, self.ef_construction, self._ef_search = M, ef_construction, ef_search
        self.add_threads, self.seed = add_threads, seed
        self._keys = np.zeros((self.capacity, self.dim), dtype=np.float32)
        self._clear()

    @property
    def ef_search(self) -> int:
        return self._ef_search

    @ef_search.setter
    def ef_search(self, ef: int) -> None:
        self._ef_search = ef
        self._graph.set_ef(ef)

    def _clear(self) -> None:
        self._graph = hnswlib.Index(space="l2", dim=self.dim)
        self._graph.init_index(max_elements=self.capacity, ef_construction=self.ef_construction, M=self.M,
                               random_seed=self.seed)
        self._graph.set_ef(self.ef_search)

    def _add(self, slots: np.ndarray, keys: np.ndarray) -> None:
        self._graph.add_items(keys, slots, num_threads=self.add_threads)
        self._keys[slots] = keys

    def _remove(self, slots: np.ndarray) -> None:
        for slot in slots.tolist():  # hnswlib marks one label per call; removals are rare and small
            self._graph.mark_deleted(slot)

    def _search(self, queries: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        q = as_array(queries, np.float32)
        try:
            labels, dist = self._graph.knn_query(q, k=k, num_threads=-1)
        except RuntimeError:
            # Many deletions can leave a region of the graph with fewer than k live points reachable;
            # answer exactly rather than return short rows.
            return self._exact(q, k)
        return dist, labels.astype(np.int64)

    def _exact(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        slots = np.flatnonzero(self._alive)
        keys = self.get(slots)
        dist = ((q[:, None, :] - keys[None]) ** 2).sum(-1)
        idx = np.argpartition(dist, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(dist, idx, 1)
        order = np.argsort(part, axis=1)
        return np.take_along_axis(part, order, 1).astype(np.float32), slots[np.take_along_axis(idx, order, 1)]

    def get(self, slots: np.ndarray) -> np.ndarray:
        return self._keys[np.asarray(slots, dtype=np.int64)]

    def state_dict(self) -> dict[str, Any]:
        """The backend-neutral state plus hnswlib's graph itself, so that a loaded index searches exactly as
        the saved one did (re-adding the keys would build another graph).

        hnswlib does not save the random state that draws new points' levels; a graph rebuilt from saved
        parameters restarts it from the seed. So this index also swaps its own graph for one rebuilt from what
        it saves: from here on it inserts exactly as a copy loaded from this state will, and a resumed run
        builds the same graph as the uninterrupted one."""
        state = super().state_dict()
        params = self._graph.__getstate__()[0]
        self._graph = self._rebuilt(params)
        state["hnsw"] = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in params.items()}
        return state

    def _rebuilt(self, params: dict[str, Any]) -> hnswlib.Index:
        graph = hnswlib.Index.__new__(hnswlib.Index)  # pybind11 pickling constructs in place
        graph.__setstate__((params,))
        graph.set_ef(self.ef_search)
        return graph

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore hnswlib's graph when it was saved with the same capacity, M and ef_construction, else
        re-add the keys."""
        saved = state.get("hnsw")
        if saved is None or (saved["max_elements"], saved["M"], saved["ef_construction"], saved["dim"]) != (
                self.capacity, self.M, self.ef_construction, self.dim):
            super().load_state_dict(state)
            return
        self._graph = self._rebuilt({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in saved.items()})
        slots = as_array(state["slots"], np.int64)
        self._alive[:] = False
        self._alive[slots] = True
        self._n = slots.size
        self._keys[slots] = as_array(state["keys"], np.float32)


class ExactIndexStack:
    """``count`` exact indexes (``tables``) over one ``[count, capacity, dim]`` buffer, so that one batched
    matmul and one topk find the k nearest keys of a query in every table (NEC reads all its per-action DNDs
    at each step: one search instead of ``count`` small ones)."""

    def __init__(self, count: int, capacity: int, dim: int, device: torch.device | str | None = None):
        self.device = torch.device(device or "cpu")
        self._keys = torch.zeros(count, capacity, dim, device=self.device)
        self._sqnorm = torch.full((count, capacity), float("inf"), device=self.device)
        self.tables = [ExactIndex(capacity, dim, device=self.device, storage=(self._keys[i], self._sqnorm[i]))
                       for i in range(count)]

    def nearest_slots(self, queries: torch.Tensor, k: int) -> torch.Tensor:
        """Slots ``[B, count, k]``: table t's k nearest keys of each query, unordered, -1 past its stored
        count (as ``ExactIndex.nearest_slots`` of every table)."""
        count = len(self.tables)
        out = torch.full((queries.shape[0], count, k), -1, dtype=torch.int64, device=self.device)
        hi = max(t._hi for t in self.tables)
        kk = min(k, hi)
        if kk == 0 or queries.shape[0] == 0:
            return out
        q = queries.to(self.device)
        sqnorm = self._sqnorm[:, None, :hi]
        scores = torch.baddbmm(sqnorm, q.expand(count, *q.shape), self._keys[:, :hi].transpose(1, 2), alpha=-2.0)
        idx = scores.topk(kk, dim=2, largest=False, sorted=False).indices  # [count, B, kk]
        empty = torch.isinf(sqnorm.expand(-1, q.shape[0], -1).gather(2, idx))  # tables with fewer than kk keys
        out[:, :, :kk] = idx.masked_fill(empty, -1).transpose(0, 1)
        return out

    def indexed_keys(self, rows: torch.Tensor) -> torch.Tensor:
        """The stored keys of flat rows ``table * capacity + slot``."""
        return self._keys.view(-1, self._keys.shape[-1])[rows]

    def replace(self, rows: torch.Tensor, keys: torch.Tensor) -> None:
        """Move the keys of distinct alive flat rows ``table * capacity + slot``: ``add`` without its checks
        and bookkeeping, which a move does not change (re-indexing the keys a learner step moved)."""
        self._keys.view(-1, self._keys.shape[-1])[rows] = keys
        self._sqnorm.view(-1)[rows] = (keys * keys).sum(1)


def resolve_kind(kind: str, capacity: int) -> str:
    """"exact" or "hnsw" for an index kind (``INDEX_KINDS``) and a capacity."""
    if kind not in INDEX_KINDS:
        raise unknown_choice("nearest-neighbour index", kind, INDEX_KINDS)
    if kind == "auto":
        return "exact" if capacity < AUTO_HNSW_CAPACITY else "hnsw"
    return kind


def make_index(kind: str, capacity: int, dim: int, device: torch.device | str | None = None,
               **hnsw_options: Any) -> KeyIndex:
    """``kind`` in {"exact", "hnsw", "auto"}; "auto" is exact below ``AUTO_HNSW_CAPACITY`` slots, else HNSW.

    ``device`` places the exact backend (HNSW runs on the CPU); ``hnsw_options`` are ``HNSWIndex`` keywords
    (M, ef_construction, ef_search, add_threads, seed) and are ignored by the exact backend.
    """
    kind = resolve_kind(kind, capacity)
    if kind == "exact":
        return ExactIndex(capacity, dim, device=device)
    return HNSWIndex(capacity, dim, **hnsw_options)
