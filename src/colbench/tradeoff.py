"""Retrieval's latency/quality trade-off: queries per second against NDCG@10 and Recall@100.

One point per ``ef_search`` setting of the hnsw mode, plus exhaustive exact search, all on the same
stored embeddings, so the report can show what the chosen setting costs and what it gives up.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from colbench import retrieve
from colbench.atomic import write_json
from colbench.evaluate import evaluate_run


def sweep(queries, docs, index, qrels: Mapping[str, Mapping[str, int]], *, k: int, ef_values: Sequence[int],
          tokens_per_query_token: int, dtype: str, block_tokens: int, ignore_identical_ids: bool,
          device: str = "cpu") -> list[dict[str, Any]]:
    """Time and score ``retrieve.search`` for each ``ef_search`` in ``ef_values`` (hnsw) and for exact search.

    Returns ``[{mode, setting, qps, ndcg@10, recall@100, recall_vs_exact@k}]``; ``recall_vs_exact@k`` is
    the share of exact search's top-k that the setting also returns.
    """
    exact_run, exact_point = _point(queries, docs, qrels, ignore_identical_ids, mode="exact", setting="exact", k=k,
                                    dtype=dtype, block_tokens=block_tokens, device=device)
    points = [exact_point]
    for ef in ef_values:
        run, point = _point(queries, docs, qrels, ignore_identical_ids, mode="hnsw", setting=ef, k=k, index=index,
                            ef_search=ef, tokens_per_query_token=tokens_per_query_token, dtype=dtype,
                            block_tokens=block_tokens, device=device)
        point[f"recall_vs_exact@{k}"] = overlap(run, exact_run)
        points.append(point)
    exact_point[f"recall_vs_exact@{k}"] = 1.0
    return points


def overlap(run: Mapping[str, Mapping[str, float]], reference: Mapping[str, Mapping[str, float]]) -> float:
    """Mean over queries of |run ∩ reference| / |reference|: how much of the reference's top-k is found."""
    shares = [len(set(run.get(q, {})) & set(hits)) / len(hits) for q, hits in reference.items() if hits]
    return sum(shares) / len(shares) if shares else 0.0


def write(points: Mapping[str, list[dict[str, Any]]], path: str | Path, *, chosen: int) -> None:
    """Write the sweep as DVC metrics: ``{chosen, points: [{dataset, ...point}]}``."""
    flat = [{"dataset": name, **p} for name, dataset_points in points.items() for p in dataset_points]
    write_json(path, {"chosen": chosen, "points": flat})


def _point(queries, docs, qrels, ignore_identical_ids, *, mode, setting, **search_kwargs):
    start = time.perf_counter()
    run = retrieve.search(queries, docs, mode=mode, **search_kwargs)
    seconds = time.perf_counter() - start
    metrics, _ = evaluate_run(run, qrels, ignore_identical_ids=ignore_identical_ids)
    return run, {"mode": mode, "setting": setting, "qps": len(queries) / seconds if seconds > 0 else None,
                 "ndcg@10": metrics["ndcg@10"], "recall@100": metrics["recall@100"]}
