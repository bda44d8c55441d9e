"""Nearest-neighbour backends for the episodic memories: speed, write cost, recall, and NEC's cost per step.

    python benchmarks/knn.py                      # 1e4, 1e5, 5e5 keys; ~4 min on 2 idle cores
    python benchmarks/knn.py --sizes 10000 --faiss-max 10000 --gaussian-max 10000   # ~20 s

d = 64, k = 50. Keys are "embedding-like" by default: a mixture of Gaussians whose clusters each span a
random 8-d subspace (learned embeddings have low intrinsic dimension); recall on isotropic Gaussian keys, the
worst case, is a separate table. The exact torch and hnswlib rows are measured through a real ``DND`` (built
by ``load_state_dict``, i.e. a checkpoint restore): insert = ``DND.write`` of 1000 new keys into free slots,
overwrite = ``DND.write`` of 1000 new keys into a full table (LRU eviction + index update: NEC's steady
state).
faiss HNSW cannot remove or move a key, so it appears for reference only (insert = ``add``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import faiss
import numpy as np
import torch

from gbmr.memory.dnd import DND
from gbmr.memory.knn import ExactIndex, HNSWIndex

DIM, K, FILL = 64, 50, 1000
RECALL_QUERIES = 200


def embedding_like(rng: np.random.Generator, n: int, clusters: int = 256, rank: int = 8) -> np.ndarray:
    centres = rng.normal(0.0, 1.0, (clusters, DIM))
    bases = rng.normal(0.0, 0.5, (clusters, rank, DIM))
    c = rng.integers(clusters, size=n)
    coords = rng.normal(size=(n, 1, rank)).astype(np.float32)
    local = (coords @ bases[c].astype(np.float32))[:, 0]
    return (centres[c] + local + rng.normal(0.0, 0.05, (n, DIM))).astype(np.float32)


def gaussian(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.normal(size=(n, DIM)).astype(np.float32)


def per_call(fn: Callable[[], object], budget: float, max_calls: int = 1000) -> float:
    """Mean seconds per call, repeating until ``budget`` seconds or ``max_calls`` (after one warm-up)."""
    fn()
    calls, start = 0, time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - start < budget):
        fn()
        calls += 1
    return (time.perf_counter() - start) / calls


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def recall(truth: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean([np.intersect1d(t, g).size / t.size for t, g in zip(truth, got, strict=True)]))


def search_rows(search: Callable[[np.ndarray], object], queries: np.ndarray,
                budget: float) -> dict[str, float]:
    single = iter(np.tile(queries, (50, 1))[:, None, :])
    return {
        "b32": 32 / per_call(lambda: search(queries[:32]), budget),
        "b1024": 1024 / per_call(lambda: search(queries[:1024]), budget),
        "single_ms": 1e3 * per_call(lambda: search(next(single)), budget),
    }


def filled_dnd(kind: str, keys: np.ndarray, rng: np.random.Generator) -> tuple[DND, float]:
    """A DND of capacity len(keys) restored from a checkpoint holding all but the last FILL keys."""
    n = len(keys) - FILL
    dnd = DND(len(keys), DIM, k=K, index=kind, add_threads=-1)
    state = {"capacity": len(keys), "dim": DIM, "size": n, "clock": n,
             "last_use": torch.arange(1, n + 1), "keys": torch.from_numpy(keys[:n]),
             "values": torch.from_numpy(rng.normal(size=n).astype(np.float32))}
    seconds = timed(lambda: dnd.load_state_dict(state))
    if isinstance(dnd.index, HNSWIndex):
        dnd.index.add_threads = 1  # what a running agent uses (reproducible graphs)
    return dnd, seconds


def nec_step(dnd: DND, queries: np.ndarray, rng: np.random.Generator, budget: float) -> dict[str, float]:
    """Costs of NEC's per-step pieces on one full DND, in ms."""
    single = iter(torch.from_numpy(np.tile(queries, (50, 1)))[:, None, :])
    with torch.no_grad():
        lookup = per_call(lambda: dnd.lookup(next(single)), budget)
    new_keys = iter(torch.from_numpy(embedding_like(rng, 2000))[:, None, :])
    write = per_call(lambda: dnd.write(next(new_keys), [0.0]), budget, max_calls=1000)
    optimiser = torch.optim.SGD(dnd.parameters(), lr=1e-5)
    batch = torch.from_numpy(queries[:32])

    def learn(tolerance: float) -> None:
        q, slots, _ = dnd.lookup_with_neighbours(batch)
        optimiser.zero_grad()
        q.square().sum().backward()
        optimiser.step()
        dnd.refresh_index(slots, tolerance=tolerance)

    return {"lookup": 1e3 * lookup, "write": 1e3 * write,
            "learn": 1e3 * per_call(lambda: learn(0.0), budget, max_calls=20),
            "learn_tol": 1e3 * per_call(lambda: learn(1e-6), budget, max_calls=20)}


class FaissHNSW:
    def __init__(self, keys: np.ndarray, ef_search: int):
        self.index = faiss.IndexHNSWFlat(DIM, 16)
        self.index.hnsw.efConstruction = 100
        self.index.hnsw.efSearch = ef_search
        self.index.add(keys)

    def search(self, queries: np.ndarray) -> np.ndarray:
        return self.index.search(np.ascontiguousarray(queries), K)[1]


def measure_dnd(kind: str, keys: np.ndarray, queries: np.ndarray, truth: np.ndarray | None,
                rng: np.random.Generator, budget: float) -> tuple[dict, DND]:
    """One row of the speed table for a backend behind a DND; ``truth=None`` means this is the exact one."""
    dnd, build = filled_dnd(kind, keys, rng)
    start = time.perf_counter()
    dnd.write(keys[-FILL:], np.zeros(FILL))
    insert = time.perf_counter() - start
    truth = dnd.index.search(queries[:RECALL_QUERIES], K)[1] if truth is None else truth
    row = {"backend": "exact (torch)" if kind == "exact" else "hnswlib", "n": len(keys), "build": build,
           **search_rows(lambda q: dnd.index.search(q, K), queries, budget), "insert": 1e3 * insert,
           "recall": recall(truth, dnd.index.search(queries[:RECALL_QUERIES], K)[1]), "truth": truth}
    if isinstance(dnd.index, HNSWIndex):
        dnd.index.ef_search = 256
        row["recall256"] = recall(truth, dnd.index.search(queries[:RECALL_QUERIES], K)[1])
        dnd.index.ef_search = 128
    fresh = embedding_like(rng, FILL)
    start = time.perf_counter()
    dnd.write(fresh, np.zeros(FILL))
    row["overwrite"] = 1e3 * (time.perf_counter() - start)
    return row, dnd


def measure_faiss(keys: np.ndarray, queries: np.ndarray, truth: np.ndarray, budget: float) -> dict:
    start = time.perf_counter()
    index = FaissHNSW(keys[:-FILL], 128)
    build = time.perf_counter() - start
    start = time.perf_counter()
    index.index.add(keys[-FILL:])
    insert = time.perf_counter() - start
    row = {"backend": "faiss HNSW", "n": len(keys), "build": build,
           **search_rows(index.search, queries, budget), "insert": 1e3 * insert,
           "recall": recall(truth, index.search(queries[:RECALL_QUERIES]))}
    index.index.hnsw.efSearch = 256
    row["recall256"] = recall(truth, index.search(queries[:RECALL_QUERIES]))
    return row


def measure_gaussian(n: int, rng: np.random.Generator, with_faiss: bool) -> dict:
    g = gaussian(rng, n + RECALL_QUERIES)
    keys, queries = g[:n], g[n:]
    exact, hnsw = ExactIndex(n, DIM), HNSWIndex(n, DIM, add_threads=-1)
    exact.add(np.arange(n), keys)
    hnsw.add(np.arange(n), keys)
    truth = exact.search(queries, K)[1]
    row = {"n": n, "hnswlib": recall(truth, hnsw.search(queries, K)[1])}
    hnsw.ef_search = 256
    row["hnswlib256"] = recall(truth, hnsw.search(queries, K)[1])
    if with_faiss:
        f = FaissHNSW(keys, 128)
        row["faiss"] = recall(truth, f.search(queries))
        f.index.hnsw.efSearch = 256
        row["faiss256"] = recall(truth, f.search(queries))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 500_000])
    parser.add_argument("--faiss-max", type=int, default=10_000,
                        help="largest size for faiss HNSW (its build is ~1.3x slower than hnswlib's)")
    parser.add_argument("--gaussian-max", type=int, default=100_000, help="largest size for Gaussian recall")
    parser.add_argument("--actions", type=int, nargs="+", default=[4, 18])
    parser.add_argument("--learn-every", type=int, default=4, help="agent steps per learner step")
    parser.add_argument("--budget", type=float, default=0.4, help="seconds per timing")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch/faiss threads (1 avoids OpenMP stalls when other jobs load the cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    speed, steps, gauss = [], {}, []
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        data = embedding_like(rng, n + 1024)
        keys, queries = data[:n], data[n:]
        truth = None
        for kind in ("exact", "hnsw"):
            print(f"[{n:.0e} keys] {kind} ...", file=sys.stderr, flush=True)
            row, dnd = measure_dnd(kind, keys, queries, truth, rng, args.budget)
            truth = row.pop("truth")
            speed.append(row)
            if n == max(args.sizes):
                steps[row["backend"]] = nec_step(dnd, queries, rng, args.budget)
            del dnd
        if n <= args.faiss_max:
            speed.append(measure_faiss(keys, queries, truth, args.budget))
        if n <= args.gaussian_max:
            gauss.append(measure_gaussian(n, rng, n <= args.faiss_max))
    report(speed, steps, gauss, args)


def fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def report(speed: list[dict], steps: dict, gauss: list[dict], args: argparse.Namespace) -> None:
    print(f"\n### k-NN backends (d={DIM}, k={K}, embedding-like keys; {torch.get_num_threads()} threads)\n")
    print("| backend | keys | build s | q/s batch 32 | q/s batch 1024 | single query ms | insert ms/1000 "
          "| overwrite ms/1000 | recall@50 ef128 | recall@50 ef256 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in speed:
        print(f"| {r['backend']} | {r['n']:.0e} | {r['build']:.1f} | {r['b32']:,.0f} | {r['b1024']:,.0f} "
              f"| {r['single_ms']:.3f} | {r['insert']:.0f} | {fmt(r.get('overwrite'), '.0f')} "
              f"| {r['recall']:.3f} | {fmt(r.get('recall256'), '.3f')} |")
    print("\nExact rows have recall 1 by definition (they are the reference). Insert/overwrite go through "
          "DND.write (k=1 match search + store + index update); faiss insert is a bare `add`.")
    if gauss:
        print(f"\n### recall@50 on isotropic Gaussian keys (d={DIM})\n")
        print("| keys | hnswlib ef128 | hnswlib ef256 | faiss HNSW ef128 | faiss HNSW ef256 |")
        print("|---:|---:|---:|---:|---:|")
        for r in gauss:
            print(f"| {r['n']:.0e} | {r['hnswlib']:.3f} | {r['hnswlib256']:.3f} "
                  f"| {fmt(r.get('faiss'), '.3f')} | {fmt(r.get('faiss256'), '.3f')} |")
    n = max(args.sizes)
    print(f"\n### NEC per agent step at {n:.0e} entries per DND (ms)\n")
    print(f"One greedy action = one single-query lookup per action's DND; one write per step at capacity; a "
          f"learner step (batch 32 lookup + backward + SGD + refresh_index) every {args.learn_every} steps. "
          f"'joint' = one table serves every action (GQ/GBMR layout).\n")
    print("| backend | lookup | write | learner step | "
          + " | ".join(f"step, {a} actions" for a in args.actions) + " | step, joint |")
    print("|---|---:|---:|---:|" + "---:|" * (len(args.actions) + 1))
    for backend, s in steps.items():
        pair = [s["write"] + s[learn] / args.learn_every for learn in ("learn", "learn_tol")]
        cells = [f"{a * s['lookup'] + pair[0]:.1f} / {a * s['lookup'] + pair[1]:.1f}" for a in args.actions]
        cells.append(f"{s['lookup'] + pair[0]:.1f} / {s['lookup'] + pair[1]:.1f}")
        print(f"| {backend} | {s['lookup']:.2f} | {s['write']:.2f} | {s['learn']:.0f} / {s['learn_tol']:.0f} | "
              + " | ".join(cells) + " |")
    print("\nEach 'a / b' pair: refresh_index of every neighbour used (a) or only of keys moved by more than "
          "1e-6 (b, refresh_index(tolerance=1e-6)).")


if __name__ == "__main__":
    main()
