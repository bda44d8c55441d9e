"""DND (NEC) and EpisodicTable (MFEC): kernel read, merge rules, LRU, gradients, checkpoints."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from gbmr.memory.dnd import DND, ActionDNDs, EpisodicTable

BACKENDS = ["exact", "hnsw"]
KEYS = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], np.float32)
VALUES = np.array([1.0, 2.0, 4.0], np.float32)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def filled_dnd(k: int = 3, index: str = "exact", **kw) -> DND:
    dnd = DND(8, 2, k=k, index=index, **kw)
    dnd.write(KEYS, VALUES)
    return dnd


@pytest.mark.parametrize("index", BACKENDS)
def test_kernel_weighted_q_by_hand(index: str) -> None:
    dnd = filled_dnd(index=index)
    # query (0, 1): squared distances 1, 2, 1 -> w = 1/1.001, 1/2.001, 1/1.001
    w = np.array([1 / 1.001, 1 / 2.001, 1 / 1.001])
    q, slots, weights = dnd.lookup_with_neighbours(torch.tensor([[0.0, 1.0]]))
    assert q.item() == pytest.approx((w @ [1.0, 2.0, 4.0]) / w.sum(), rel=1e-6)
    assert sorted(slots[0].tolist()) == [0, 1, 2]
    np.testing.assert_allclose(weights.sum(1).detach(), [1.0], rtol=1e-6)
    # k = 2 from (0.9, 0): distances 0.81 (slot 0), 0.01 (slot 1); slot 2 (4.81) is not used
    dnd2 = filled_dnd(k=2, index=index)
    w2 = np.array([1 / 0.811, 1 / 0.011])
    q2 = dnd2.lookup(torch.tensor([[0.9, 0.0]])).item()
    assert q2 == pytest.approx((w2 @ [1.0, 2.0]) / w2.sum(), rel=1e-5)


def test_fewer_than_k_uses_what_is_there_and_empty_reads_zero() -> None:
    dnd = DND(8, 2, k=50)
    assert dnd.lookup(torch.zeros(2, 2)).tolist() == [0.0, 0.0]
    dnd.write(KEYS[:2], VALUES[:2])
    w = np.array([1 / 0.251, 1 / 0.251])  # (0.5, 0) is 0.25 from both keys
    assert dnd.lookup(torch.tensor([[0.5, 0.0]])).item() == pytest.approx((w @ [1.0, 2.0]) / w.sum())


def test_write_merge_rule_alpha_by_hand() -> None:
    dnd = DND(8, 2, k=1, alpha=0.1)
    a, b = np.array([[1.0, 1.0]], np.float32), np.array([[5.0, 5.0]], np.float32)
    dnd.write(a, [1.0])
    dnd.write(a, [3.0])  # 1 + 0.1 (3 - 1) = 1.2
    assert dnd.values[0].item() == pytest.approx(1.2)
    dnd.write(np.concatenate([a, a + 1e-4]), [5.0, 7.0])  # near-identical (d^2 = 2e-8): sequential merges
    assert dnd.values[0].item() == pytest.approx(1.2 + 0.1 * (5 - 1.2) + 0.1 * (7 - (1.2 + 0.1 * (5 - 1.2))))
    dnd.write(np.concatenate([b, b, a + 0.01]), [2.0, 4.0, 9.0])  # b new then merged; a + 0.01 is a new key
    assert len(dnd) == 3
    np.testing.assert_allclose(dnd.values.detach()[:3], [2.122, 2.0 + 0.1 * (4.0 - 2.0), 9.0], rtol=1e-6)
    np.testing.assert_allclose(dnd.keys.detach()[:3], np.concatenate([a, b, a + 0.01]))


@pytest.mark.parametrize("index", BACKENDS)
def test_lru_eviction_counts_lookups_as_use(index: str) -> None:
    dnd = DND(3, 2, k=1, index=index)
    points = [(0, 0), (10, 0), (0, 10), (20, 0), (30, 0), (40, 0), (50, 0)]
    a, b, c, d, e, f, g = ([[x, y]] for x, y in points)
    for key in (a, b, c):
        dnd.write(np.array(key, np.float32), [1.0])  # slots 0, 1, 2
    dnd.lookup(torch.tensor([[9.0, 0.0]]))  # uses b
    dnd.lookup(torch.tensor([[1.0, 0.0]]))  # uses a: least recently used first is now c, b, a
    dnd.write(np.array(d + e, np.float32), [2.0, 3.0])  # d evicts c (slot 2), then e evicts b (slot 1)
    np.testing.assert_allclose(dnd.keys.detach(), a + e + d)
    np.testing.assert_allclose(dnd.values.detach(), [1.0, 3.0, 2.0])
    _, slots, _ = dnd.lookup_with_neighbours(torch.tensor([[0.0, 10.0]]))  # c is gone: a answers
    assert slots.item() == 0
    dnd.write(np.array(f, np.float32), [4.0])  # evicts d: written before e in the same batch
    dnd.write(np.array(g, np.float32), [5.0])  # evicts e
    np.testing.assert_allclose(dnd.keys.detach(), a + g + f)


@pytest.mark.parametrize("sparse_grad", [True, False])
def test_gradient_reaches_query_and_only_the_keys_and_values_used(sparse_grad: bool) -> None:
    rng = np.random.default_rng(0)
    dnd = DND(20, 4, k=3, sparse_grad=sparse_grad)
    dnd.write(rng.normal(size=(12, 4)), rng.normal(size=12))
    queries = torch.tensor(rng.normal(size=(2, 4)), dtype=torch.float32, requires_grad=True)
    q, slots, _ = dnd.lookup_with_neighbours(queries)
    (q - 1.0).square().sum().backward()
    assert (queries.grad.abs().sum(1) > 0).all()
    key_grad, value_grad = (p.grad.to_dense() if sparse_grad else p.grad for p in dnd.parameters())
    used = np.unique(slots.numpy())
    assert set(np.flatnonzero(key_grad.abs().sum(1))) == set(used)
    assert set(np.flatnonzero(value_grad)) == set(used)

    # an optimiser step moves the used keys; refresh_index makes the index see them (unless within tolerance)
    before = dnd.index.get(used)
    torch.optim.SGD(dnd.parameters(), lr=0.5).step()
    moved = dnd.keys.detach()[used].numpy()
    assert ((moved - before) ** 2).sum(1).max() < 100.0
    dnd.refresh_index(slots, tolerance=100.0)
    np.testing.assert_array_equal(dnd.index.get(used), before)
    dnd.refresh_index(slots)
    np.testing.assert_array_equal(dnd.index.get(used), moved)
    assert (moved != before).any(1).all()


@pytest.mark.parametrize("index", BACKENDS)
def test_dnd_state_dict_round_trip(index: str) -> None:
    rng = np.random.default_rng(1)
    dnd = DND(40, 4, k=5, index=index)
    dnd.write(rng.normal(size=(30, 4)), rng.normal(size=30))
    queries = torch.tensor(rng.normal(size=(10, 4)), dtype=torch.float32)
    dnd.lookup(queries[:3])
    restored = DND(40, 4, k=5, index=index)
    restored.load_state_dict(roundtrip(dnd.state_dict()))
    torch.testing.assert_close(restored.lookup(queries), dnd.lookup(queries), rtol=0, atol=0)
    # the LRU state came along: the same entries are evicted next
    fill = rng.normal(size=(15, 4))
    dnd.write(fill, np.zeros(15))
    restored.write(fill, np.zeros(15))
    torch.testing.assert_close(restored.keys, dnd.keys, rtol=0, atol=0)
    np.testing.assert_array_equal(restored.last_use, dnd.last_use)


@pytest.mark.parametrize("index", BACKENDS)
def test_episodic_table_keeps_max_and_reads_match_or_mean(index: str) -> None:
    table = EpisodicTable(4, 2, k=2, index=index)
    assert table.lookup(np.zeros((1, 2), np.float32)).tolist() == [0.0]
    table.write(KEYS, VALUES)
    table.write(KEYS[:1], [0.5])  # lower return: keeps 1
    table.write(KEYS[1:2], [6.0])  # higher return: 6
    np.testing.assert_array_equal(table.values[:3], [1.0, 6.0, 4.0])
    # exact match reads its own value; elsewhere the mean of the 2 nearest
    np.testing.assert_allclose(table.lookup(np.array([[0, 0], [0.6, 0], [0, 1.5]], np.float32)),
                               [1.0, (1.0 + 6.0) / 2, (4.0 + 1.0) / 2])
    table.write(np.array([[7.0, 7.0], [8.0, 8.0]], np.float32), [3.0, 2.0])  # evicts slot 0, the LRU
    np.testing.assert_array_equal(table.values, [2.0, 6.0, 4.0, 3.0])
    restored = EpisodicTable(4, 2, k=2, index=index)
    restored.load_state_dict(roundtrip(table.state_dict()))
    queries = np.random.default_rng(2).normal(size=(6, 2)).astype(np.float32)
    np.testing.assert_array_equal(restored.lookup(queries), table.lookup(queries))


def filled_action_dnds(index: str, seed: int = 3) -> ActionDNDs:
    rng = np.random.default_rng(seed)
    dnds = ActionDNDs(3, 40, 4, k=5, index=index)
    for a, n in enumerate((30, 2, 12)):  # DND 1 holds fewer than k entries
        dnds[a].write(rng.normal(size=(n, 4)), rng.normal(size=n))
    return dnds


@pytest.mark.parametrize("index", BACKENDS)
def test_action_dnds_read_every_action_as_each_dnd_does(index: str) -> None:
    dnds = filled_action_dnds(index)
    queries = torch.tensor(np.random.default_rng(4).normal(size=(7, 4)), dtype=torch.float32)
    q = dnds.q_values(queries)
    assert [d.clock for d in dnds] == [31, 3, 13]  # one tick per write + one per read
    expected = torch.stack([dnd.lookup(queries) for dnd in dnds], dim=1)
    torch.testing.assert_close(q, expected, rtol=1e-6, atol=1e-6)  # the kernel sums in another order
    actions = np.array([2, 0, 1, 0, 2, 2, 1])
    read = dnds.read(queries, actions)
    torch.testing.assert_close(read.q, expected[torch.arange(7), torch.from_numpy(actions)], rtol=1e-6, atol=1e-6)
    assert (read.rows[actions == 1, 2:] == -1).all() and (read.rows[actions == 1, :2] // 40 == 1).all()


def test_action_dnds_sgd_step_is_sgd_on_the_sparse_gradients() -> None:
    """The scatter step moves the same keys and values by the same amounts as torch's SGD on the gradients of
    ``DND.lookup_with_neighbours`` (a neighbour shared by two queries gets both gradients)."""
    dnds, reference = filled_action_dnds("exact"), filled_action_dnds("exact")
    queries = torch.tensor(np.random.default_rng(4).normal(size=(6, 4)), dtype=torch.float32)
    queries[1] = queries[0]  # same neighbours twice
    actions = np.array([0, 0, 2, 2, 0, 1])
    targets = torch.arange(6, dtype=torch.float32)
    read = dnds.read(queries, actions, grad=True)
    (targets - read.q).square().mean().backward()
    dnds.sgd_step(read, lr=0.1)

    opt = torch.optim.SGD([p for dnd in reference for p in dnd.parameters()], lr=0.1)
    q = torch.zeros(6)
    for a in np.unique(actions):
        rows = torch.from_numpy(actions == a)
        q = q.index_put((rows,), reference[a].lookup_with_neighbours(queries[rows])[0])
    (targets - q).square().mean().backward()
    opt.step()
    torch.testing.assert_close(dnds.keys, reference.keys, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(dnds.values, reference.values, rtol=1e-6, atol=1e-7)
    assert not torch.equal(dnds.keys, filled_action_dnds("exact").keys)

    # re-indexing: within the tolerance the index keeps the old keys, else it sees the moved ones
    used = read.rows[read.rows >= 0].unique()
    before = dnds.stack.indexed_keys(used)
    dnds.refresh_index(read.rows, tolerance=100.0)
    torch.testing.assert_close(dnds.stack.indexed_keys(used), before, rtol=0, atol=0)
    dnds.refresh_index(read.rows, tolerance=1e-12)
    torch.testing.assert_close(dnds.stack.indexed_keys(used), dnds.keys.view(-1, 4)[used], rtol=0, atol=0)


def test_dnd_checkpoint_keeps_the_keys_the_index_has_not_seen_move() -> None:
    dnd = filled_dnd()
    with torch.no_grad():
        dnd.keys[1] += 0.01  # moved by a learner step, not re-indexed (within tolerance)
    restored = DND(8, 2, k=3)
    restored.load_state_dict(roundtrip(dnd.state_dict()))
    np.testing.assert_array_equal(restored.index.get(np.arange(3)), KEYS)
    torch.testing.assert_close(restored.keys, dnd.keys, rtol=0, atol=0)
