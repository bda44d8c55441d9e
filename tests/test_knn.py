"""KeyIndex backends: exactness against numpy, slot semantics, HNSW recall, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from gbmr.core.errors import GbmrError
from gbmr.memory.knn import ExactIndex, ExactIndexStack, HNSWIndex, KeyIndex, make_index

BACKENDS = ["exact", "hnsw"]


def numpy_knn(
    keys: np.ndarray, slots: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    d = ((queries[:, None, :].astype(np.float64) - keys[None].astype(np.float64)) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), slots[order]


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 64) -> np.ndarray:
    """Mixture of Gaussians: tight clusters around spread centres, like learned embeddings."""
    centres = rng.normal(0.0, 1.0, (clusters, dim))
    return (centres[rng.integers(clusters, size=n)] + rng.normal(0.0, 0.25, (n, dim))).astype(np.float32)


@pytest.mark.parametrize("chunk_elements", [1 << 23, 5000])  # one chunk / many query chunks
def test_exact_matches_numpy_brute_force(chunk_elements: int) -> None:
    rng = np.random.default_rng(0)
    index = ExactIndex(3000, 16, chunk_elements=chunk_elements)
    slots = rng.permutation(3000)[:2000]  # scattered slots, some empty ones inside the scanned range
    keys = rng.normal(size=(2000, 16)).astype(np.float32) * 3.0
    index.add(slots, keys)
    queries = rng.normal(size=(100, 16)).astype(np.float32) * 3.0
    dist, got = index.search(queries, 10)
    want_d, want_s = numpy_knn(keys, slots, queries, 10)
    np.testing.assert_array_equal(got, want_s)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5, atol=1e-5)
    assert dist.dtype == np.float32 and got.dtype == np.int64


def test_exact_distance_of_identical_key_is_zero() -> None:
    """Large-norm keys: the matmul form alone would leave cancellation error; the recompute gives 0."""
    index = ExactIndex(10, 64)
    keys = np.random.default_rng(1).normal(300.0, 50.0, (10, 64)).astype(np.float32)
    index.add(np.arange(10), keys)
    dist, slots = index.search(keys, 1)
    np.testing.assert_array_equal(slots[:, 0], np.arange(10))
    np.testing.assert_array_equal(dist[:, 0], 0.0)


@pytest.mark.parametrize("kind", BACKENDS)
def test_fewer_than_k_pads_with_minus_one_and_inf(kind: str) -> None:
    index = make_index(kind, 10, 2)
    dist, slots = index.search(np.zeros((1, 2), np.float32), 3)
    np.testing.assert_array_equal(slots, [[-1, -1, -1]])
    assert np.isinf(dist).all()
    index.add([4, 7], np.array([[1.0, 0.0], [3.0, 0.0]], np.float32))
    dist, slots = index.search(np.zeros((1, 2), np.float32), 3)
    np.testing.assert_array_equal(slots, [[4, 7, -1]])
    np.testing.assert_allclose(dist, [[1.0, 9.0, np.inf]])


@pytest.mark.parametrize("kind", BACKENDS)
def test_add_remove_update_semantics(kind: str) -> None:
    index = make_index(kind, 8, 2)
    keys = np.array([[0, 0], [10, 0], [20, 0], [30, 0]], np.float32)
    index.add([0, 1, 2, 3], keys)
    assert len(index) == 4

    index.remove([1, 1, 5])  # repeated and empty slots are ignored
    assert len(index) == 3
    _, slots = index.search(keys, 3)
    assert 1 not in slots
    assert slots[1, 0] in (0, 2)  # query at the removed key: a live neighbour answers

    index.add([2], np.array([[100, 0]], np.float32))  # update: slot 2 moves
    assert len(index) == 3
    _, slots = index.search(np.array([[100, 0], [20, 0]], np.float32), 1)
    np.testing.assert_array_equal(slots[:, 0], [2, 3])
    np.testing.assert_array_equal(index.get(np.array([2])), [[100, 0]])

    index.add([1], np.array([[50, 0]], np.float32))  # a removed slot comes back
    _, slots = index.search(np.array([[49, 0]], np.float32), 1)
    assert slots[0, 0] == 1 and len(index) == 4

    index.add([6, 6], np.array([[70, 0], [80, 0]], np.float32))  # repeated slot: the last key wins
    np.testing.assert_array_equal(index.get(np.array([6])), [[80, 0]])
    np.testing.assert_array_equal(np.flatnonzero(index.alive), [0, 1, 2, 3, 6])

    index.remove([0, 1, 2, 3, 6])
    assert len(index) == 0
    assert (index.search(keys, 2)[1] == -1).all()

    with pytest.raises(IndexError):
        index.add([8], np.zeros((1, 2), np.float32))


def test_hnsw_recall_on_clustered_keys_and_removal() -> None:
    rng = np.random.default_rng(2)
    n, dim, k = 8000, 32, 10
    keys = clustered(rng, n, dim)
    queries = clustered(rng, 200, dim)
    exact, hnsw = ExactIndex(n, dim), HNSWIndex(n, dim, ef_search=64)
    for index in (exact, hnsw):
        index.add(np.arange(n), keys)

    def recall() -> float:
        want, got = exact.search(queries, k)[1], hnsw.search(queries, k)[1]
        return np.mean([len(np.intersect1d(w, g)) / k for w, g in zip(want, got, strict=True)])

    assert recall() >= 0.9
    removed = rng.permutation(n)[: n // 3]
    exact.remove(removed)
    hnsw.remove(removed)
    assert not np.isin(hnsw.search(queries, k)[1], removed).any()
    assert recall() >= 0.9


def test_hnsw_answers_exactly_when_the_graph_cannot_fill_k() -> None:
    """hnswlib raises when it reaches fewer than k live points (a graph cut up by deletions)."""

    class Starved:
        def __init__(self, graph):
            self.graph = graph

        def knn_query(self, *args, **kwargs):
            raise RuntimeError("Cannot return the results in a contiguous 2D array")

        def get_items(self, *args, **kwargs):
            return self.graph.get_items(*args, **kwargs)

    rng = np.random.default_rng(3)
    keys = rng.normal(size=(500, 8)).astype(np.float32)
    hnsw = HNSWIndex(500, 8)
    hnsw.add(np.arange(500), keys)
    hnsw.remove(np.arange(480))
    hnsw._graph = Starved(hnsw._graph)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    dist, slots = hnsw.search(queries, 10)
    want_d, want_s = numpy_knn(keys[480:], np.arange(480, 500), queries, 10)
    np.testing.assert_array_equal(slots, want_s)
    np.testing.assert_allclose(dist, want_d, rtol=1e-5)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("source", BACKENDS)
@pytest.mark.parametrize("target", BACKENDS)
def test_state_dict_round_trip_across_backends(source: str, target: str) -> None:
    rng = np.random.default_rng(4)
    keys = rng.normal(size=(300, 8)).astype(np.float32)
    index = make_index(source, 400, 8)
    index.add(np.arange(100, 400), keys)
    index.remove(np.arange(100, 150))
    restored: KeyIndex = make_index(target, 400, 8)
    restored.add([0], np.zeros((1, 8), np.float32))  # loading replaces whatever was there
    restored.load_state_dict(roundtrip(index.state_dict()))
    np.testing.assert_array_equal(restored.alive, index.alive)
    queries = rng.normal(size=(20, 8)).astype(np.float32)
    np.testing.assert_array_equal(restored.search(queries, 5)[1], index.search(queries, 5)[1])
    with pytest.raises(ValueError, match="capacity"):
        make_index(target, 401, 8).load_state_dict(index.state_dict())


def test_hnsw_inserts_after_a_checkpoint_as_the_loaded_copy_does() -> None:
    """hnswlib does not save its level RNG; the saved index re-seats itself on its saved graph, so that an
    uninterrupted run and one resumed from the checkpoint build the same graph from the same later inserts."""
    rng = np.random.default_rng(5)
    keys = rng.normal(size=(2000, 16)).astype(np.float32)
    live = HNSWIndex(2000, 16, ef_search=10)
    live.add(np.arange(1000), keys[:1000])
    state = roundtrip(live.state_dict())
    resumed = HNSWIndex(2000, 16, ef_search=10)
    resumed.load_state_dict(state)
    for index in (live, resumed):
        index.add(np.arange(1000, 2000), keys[1000:])
        index.add(np.arange(0, 2000, 7), keys[::7] + 0.1)  # moved points (hnswlib updatePoint)
    saved_live, saved_resumed = live.state_dict()["hnsw"], resumed.state_dict()["hnsw"]
    for name in ("element_levels", "link_lists", "data_level0"):
        assert torch.equal(saved_live[name], saved_resumed[name]), name
    queries = rng.normal(size=(50, 16)).astype(np.float32)  # ef 10: approximate, so graph-dependent
    np.testing.assert_array_equal(live.search(queries, 10)[1], resumed.search(queries, 10)[1])


def test_make_index_choices() -> None:
    assert isinstance(make_index("auto", 99_999, 4), ExactIndex)
    assert isinstance(make_index("auto", 100_000, 4, ef_search=10), HNSWIndex)
    assert isinstance(make_index("exact", 10, 4, ef_search=10), ExactIndex)  # HNSW options ignored
    assert make_index("hnsw", 10, 4, ef_search=77).ef_search == 77
    with pytest.raises(GbmrError, match="Did you mean 'hnsw'"):
        make_index("hnws", 10, 4)


def test_nearest_slots_and_the_stack_find_the_same_neighbours_as_search() -> None:
    """Unordered k-NN slots of one index and of every table of a stack at once: the sets ``search`` returns,
    -1 past a table's stored count (table 2 holds 3 keys, table 1 none)."""
    rng = np.random.default_rng(5)
    stack = ExactIndexStack(3, 64, 4)
    sizes = (40, 0, 3)
    for table, n in zip(stack.tables, sizes, strict=True):
        if n:
            table.add(rng.permutation(64)[:n], rng.normal(size=(n, 4)))
    queries = torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32)
    together = stack.nearest_slots(queries, 5)
    assert together.shape == (6, 3, 5)
    for t, (table, n) in enumerate(zip(stack.tables, sizes, strict=True)):
        _, expected = table.search(queries, 5)
        alone = table.nearest_slots(queries, 5)
        for b in range(6):
            assert sorted(together[b, t].tolist()) == sorted(alone[b].tolist()) == sorted(expected[b].tolist())
        assert (alone[:, min(n, 5):] == -1).all()
    # a moved key is found at its new place
    rows = torch.tensor([2 * 64 + int(np.flatnonzero(stack.tables[2].alive)[0])])
    stack.replace(rows, queries[:1])
    assert stack.indexed_keys(rows).tolist() == queries[:1].tolist()
    assert (rows[0] - 2 * 64) in stack.nearest_slots(queries[:1], 1)[0, 2].tolist()
