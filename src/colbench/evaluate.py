"""BEIR metrics for id-keyed runs, and a seeded bootstrap over queries.

Conventions (the contract the report relies on):

* A run is ``{query_id: {doc_id: score}}``; qrels are ``{query_id: {doc_id: relevance}}``. Metrics are
  computed from ids, never from list positions, by pytrec_eval (the trec_eval that BEIR uses).
* Ranking: hits are ordered by score, descending; exact ties are broken by document id, ascending.
  (trec_eval alone would break them by id *descending*; fixing the order here makes every metric,
  including MRR, see the same ranking as the run file.) The caller's run is never modified.
* ``ignore_identical_ids=True`` drops a hit whose document id equals its query id before ranking
  (BEIR's default; in ArguAna every query is a corpus document). ``False`` keeps it, as PyLate's evaluation, with
  which the study's numbers were computed, does. Set it per dataset (`evaluate_protocols` computes both).
* A document is relevant when its relevance is >= 1 (trec_eval's default); NDCG uses the graded
  relevance as a linear gain, as trec_eval and BEIR do. Documents absent from the qrels of a query are
  non-relevant.
* Every query of the qrels counts in the mean. A query with no result (absent from the run, or left
  empty after identical ids are dropped) scores 0 on every metric; a query whose judgements are all
  below 1 scores 0 too. Run queries absent from the qrels are ignored. The counts are reported in the
  aggregate: ``queries``, ``queries_without_results``, ``run_queries_without_qrels``.
* Metric names: ``ndcg@k``, ``recall@k``, ``map@k``, ``mrr@k``, ``precision@k`` for every k in
  ``k_values`` plus 10 and 100 (NDCG@10, Recall@100, MAP@100, MRR@10 always exist); values in [0, 1].
"""

from __future__ import annotations

import csv
import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytrec_eval

from colbench.config import ALWAYS_REPORTED_CUTOFFS
from colbench.errors import InputError

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]

# trec_eval measure family -> our metric prefix. MRR is handled separately: trec_eval's recip_rank
# has no cutoff, so it is computed on the run cut at k.
_FAMILIES = {"ndcg_cut": "ndcg", "recall": "recall", "map_cut": "map", "P": "precision"}


def metric_names(k_values: Iterable[int] = (1, 10, 100)) -> list[str]:
    """The metric names :func:`evaluate_run` returns for ``k_values``, in output order."""
    ks = _cutoffs(k_values)
    return [f"{prefix}@{k}" for prefix in ("ndcg", "recall", "map", "mrr", "precision") for k in ks]


def evaluate_run(
    run: Run,
    qrels: Qrels,
    *,
    k_values: Iterable[int] = (1, 10, 100),
    ignore_identical_ids: bool,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Score ``run`` against ``qrels``.

    Returns ``(aggregate, per_query)``: ``aggregate`` maps each metric name to its mean over every
    query of the qrels, plus the three counts named in the module docstring; ``per_query`` maps each
    query id of the qrels to ``{metric: value}``. See the module docstring for every convention.
    """
    if not qrels:
        raise InputError("qrels are empty: check the dataset's qrels/<split>.tsv and the split name")
    ks = _cutoffs(k_values)
    ranked = {qid: _rank(qid, hits, ignore_identical_ids) for qid, hits in run.items() if qid in qrels}

    # Integer scores that encode our ranking: pytrec_eval then sees no ties and orders exactly as we do.
    trec_run = {
        qid: {doc: float(len(docs) - pos) for pos, doc in enumerate(docs)}
        for qid, docs in ranked.items()
        if docs
    }
    trec_qrels = {qid: {doc: int(rel) for doc, rel in judged.items()} for qid, judged in qrels.items()}
    cut = ",".join(str(k) for k in ks)
    measures = {f"{family}.{cut}" for family in _FAMILIES}
    scores = pytrec_eval.RelevanceEvaluator(trec_qrels, measures).evaluate(trec_run)

    names = metric_names(ks)
    per_query: dict[str, dict[str, float]] = {}
    for qid in qrels:
        values = dict.fromkeys(names, 0.0)
        trec = scores.get(qid)
        if trec is not None:
            for family, prefix in _FAMILIES.items():
                for k in ks:
                    values[f"{prefix}@{k}"] = float(trec[f"{family}_{k}"])
            for k in ks:
                values[f"mrr@{k}"] = _reciprocal_rank(ranked[qid][:k], qrels[qid])
        per_query[qid] = values

    n = len(per_query)
    aggregate: dict[str, Any] = {name: sum(v[name] for v in per_query.values()) / n for name in names}
    aggregate["queries"] = n
    aggregate["queries_without_results"] = sum(1 for qid in qrels if qid not in trec_run)
    aggregate["run_queries_without_qrels"] = sum(1 for qid in run if qid not in qrels)
    return aggregate, per_query


PROTOCOL_METRICS = ("ndcg@10", "recall@100", "map@100", "mrr@10")


def evaluate_protocols(
    run: Run, qrels: Qrels, *, k_values: Iterable[int] = (1, 10, 100), ignore_identical_ids: bool
) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Score ``run`` under the reported identical-id protocol and under the other one.

    The study's numbers come from PyLate's evaluation, which keeps a hit whose document id equals its query
    id; BEIR's drops it. Returns ``(metrics, per_query, other_per_query)``: ``metrics`` is the aggregate of
    :func:`evaluate_run` under ``ignore_identical_ids`` plus ``identical_ids`` ("kept" or "dropped"),
    ``self_hits`` (hits in the run whose document id equals the query id: what dropping removes) and
    ``other_protocol`` (the same for the other policy, with the ``PROTOCOL_METRICS``); the per-query dicts
    belong to the reported and the other protocol.
    """
    metrics, per_query = evaluate_run(run, qrels, k_values=k_values, ignore_identical_ids=ignore_identical_ids)
    other, other_per_query = evaluate_run(run, qrels, k_values=k_values, ignore_identical_ids=not ignore_identical_ids)
    policy = {True: "dropped", False: "kept"}
    metrics = {**metrics, "identical_ids": policy[ignore_identical_ids],
               "self_hits": sum(1 for qid, hits in run.items() if qid in qrels and qid in hits),
               "other_protocol": {"identical_ids": policy[not ignore_identical_ids],
                                  **{name: other[name] for name in PROTOCOL_METRICS}}}
    return metrics, per_query, other_per_query


def protocol_table(metrics: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per dataset of `evaluate_protocols`' metrics: the reported protocol's main metrics, its
    identical-id policy and self-hits, then the other protocol's metrics (suffixed with its policy)."""
    rows = {}
    for name, m in metrics.items():
        other = m["other_protocol"]
        rows[name] = {"identical_ids": m["identical_ids"], **{k: m[k] for k in PROTOCOL_METRICS},
                      "queries": m["queries"], "self_hits": m["self_hits"],
                      **{f"{k} (ids {other['identical_ids']})": other[k] for k in PROTOCOL_METRICS}}
    return pd.DataFrame.from_dict(rows, orient="index")


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """Read a BEIR qrels file (tab-separated ``query-id  corpus-id  score``, with a header row).

    Ids are kept as strings. A repeated (query, document) pair keeps its last score, as BEIR's loader
    does, with a warning when the scores disagree.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"qrels file {path} does not exist: prepare the dataset first")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8", newline="") as handle:
        for line_no, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) < 3:
                raise InputError(f"{path}:{line_no}: expected 'query-id<TAB>corpus-id<TAB>score', got {row!r}")
            qid, doc, raw = row[0].strip(), row[1].strip(), row[-1].strip()
            try:
                rel = int(float(raw))
            except ValueError:
                if line_no == 1:  # the header row
                    continue
                raise InputError(f"{path}:{line_no}: relevance {raw!r} is not a number") from None
            previous = qrels.setdefault(qid, {}).get(doc)
            if previous is not None and previous != rel:
                warnings.warn(f"{path}:{line_no}: ({qid}, {doc}) judged {previous} and {rel}; keeping {rel}")
            qrels[qid][doc] = rel
    if not qrels:
        raise InputError(f"qrels file {path} has no judgements")
    return qrels


def paired_bootstrap(
    per_query_a: Mapping[str, Mapping[str, float]],
    per_query_b: Mapping[str, Mapping[str, float]] | None = None,
    *,
    metric: str,
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 42,
) -> dict[str, Any]:
    """Percentile bootstrap over queries of ``metric``'s mean (or of the paired difference a - b).

    Queries are resampled with replacement ``samples`` times with ``numpy.random.default_rng(seed)``.
    Without ``b``: ``mean``, ``low``, ``high`` of a. With ``b``: the same for the per-query difference
    a - b over a's queries (b must contain all of them), plus ``mean_a`` and ``mean_b``.
    """
    qids = sorted(per_query_a)  # sorted: the resample depends only on the seed, not on dict order
    if not qids:
        raise InputError("no per-query values to bootstrap")
    a = _column(per_query_a, qids, metric, "a")
    result: dict[str, Any] = {"metric": metric, "queries": len(qids), "samples": samples, "confidence": confidence}
    if per_query_b is None:
        values = a
    else:
        missing = [q for q in qids if q not in per_query_b]
        if missing:
            raise InputError(
                f"baseline lacks {len(missing)} of the queries (e.g. {missing[:3]}): compare runs on the same queries"
            )
        b = _column(per_query_b, qids, metric, "b")
        values = a - b
        result["mean_a"], result["mean_b"] = float(a.mean()), float(b.mean())

    # Hand-written percentile bootstrap (a few lines) rather than scipy.stats.bootstrap: its default
    # BCa interval fails on degenerate samples (e.g. identical runs, all differences 0), which happen.
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    chunk = max(1, 2_000_000 // len(qids))  # bound the index matrix's memory
    for start in range(0, samples, chunk):
        stop = min(samples, start + chunk)
        idx = rng.integers(0, len(qids), size=(stop - start, len(qids)))
        means[start:stop] = values[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    result.update(mean=float(values.mean()), low=float(low), high=float(high))
    return result


def _cutoffs(k_values: Iterable[int]) -> list[int]:
    return sorted({int(k) for k in k_values} | set(ALWAYS_REPORTED_CUTOFFS))


def _rank(qid: str, hits: Mapping[str, float], ignore_identical_ids: bool) -> list[str]:
    items = []
    for doc, score in hits.items():
        if ignore_identical_ids and doc == qid:
            continue
        score = float(score)
        if not math.isfinite(score):
            raise InputError(f"run: query {qid!r}, document {doc!r} has score {score}: scores must be finite")
        items.append((-score, doc))
    items.sort()
    return [doc for _, doc in items]


def _reciprocal_rank(docs: list[str], judged: Mapping[str, int]) -> float:
    for pos, doc in enumerate(docs, 1):
        if judged.get(doc, 0) >= 1:
            return 1.0 / pos
    return 0.0


def _column(per_query: Mapping[str, Mapping[str, float]], qids: list[str], metric: str, which: str) -> np.ndarray:
    try:
        return np.array([float(per_query[q][metric]) for q in qids])
    except KeyError:
        raise InputError(f"per-query values of run {which} have no metric {metric!r}") from None
