"""MaxSim retrieval: exact scores (hand-worked and against a naive oracle), masking, ties, hnsw, TREC files."""

import numpy as np
import pytest
import torch

from colbench.errors import InputError
from colbench.index import build_index, open_index
from colbench.retrieve import _max_over_tokens, search
from colbench.runs import read_trec, write_trec
from colbench.store import open_store, write_store


def make_store(path, ids, docs, meta=None):
    """A store from a list of [t, dim] arrays."""
    vecs = np.concatenate([np.asarray(d, np.float32).reshape(-1, np.shape(d)[-1]) for d in docs])
    lengths = np.array([len(d) for d in docs], np.int64)
    write_store(path, ids, [(vecs, lengths)], total_tokens=len(vecs), dim=vecs.shape[1], dtype="float32",
                meta=meta or {"model": "m"})
    return open_store(path)


def naive_maxsim(q, d):
    """Reference: one query, one document, float64."""
    return float((np.asarray(q, np.float64) @ np.asarray(d, np.float64).T).max(axis=1).sum())


def clustered(rng, n_docs, dim=16, n_topics=8, length=(3, 12)):
    """Documents whose tokens come from a few topic centres (random Gaussian vectors are too unrealistic)."""
    centres = rng.standard_normal((n_topics, dim))
    docs = []
    for _ in range(n_docs):
        t = rng.integers(length[0], length[1] + 1)
        topic = centres[rng.integers(n_topics)]
        v = topic + 0.5 * rng.standard_normal((t, dim))
        docs.append((v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32))
    return docs


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-6), ("bfloat16", 1e-2)])
def test_hand_worked_scores_and_padding_never_wins(tmp_path, dtype, tol):
    # Query tokens (1,0) and (0,1). Doc "long": tokens (1,0),(0,-1) -> max 1 + max(0,-1)=0 -> 1.
    # Doc "short": one token (-1,-1)/sqrt2 -> -0.7071 + -0.7071 = -1.4142. With zero padding (PyLate),
    # "short" padded to 2 tokens would score 0 + 0 = 0 instead. "far": tokens (-1,0),(-0.6,-0.8) ->
    # max(-1,-0.6) + max(0,-0.8) = -0.6 + 0 = -0.6: the max of all-negative similarities is the one nearest 0.
    docs = make_store(tmp_path / "d", ["long", "short", "far"],
                      [[[1, 0], [0, -1]], [[-0.70710678, -0.70710678]], [[-1, 0], [-0.6, -0.8]]])
    queries = make_store(tmp_path / "q", ["q1"], [[[1, 0], [0, 1]]])
    run = search(queries, docs, k=3, mode="exact", dtype=dtype)
    assert list(run["q1"]) == ["long", "far", "short"]
    assert run["q1"]["long"] == pytest.approx(1.0, abs=tol)
    assert run["q1"]["far"] == pytest.approx(-0.6, abs=tol)
    assert run["q1"]["short"] == pytest.approx(-1.4142135, abs=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_max_over_document_tokens_equals_amax_for_any_signs(dtype):
    # The max is taken on the floats' bits (see _max_over_tokens): check it against amax on mixed signs,
    # all-negative rows, +0 and -0.
    g = torch.Generator().manual_seed(0)
    sims = (torch.rand((50, 7, 33), generator=g) * 2 - 1).to(dtype)
    sims[:10] = -sims[:10].abs()  # every value negative
    sims[10:20, 3] = 0.0
    sims[20:25] = -sims[20:25].abs()
    sims[20:25, 2] = -0.0
    expected = sims.amax(dim=1)
    got = _max_over_tokens(sims.clone())
    assert torch.equal(got, expected)


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-4), ("bfloat16", 0.08)])
@pytest.mark.parametrize("block_tokens", [1, 40, 10**6])
@pytest.mark.parametrize("device", ["cpu", pytest.param("auto", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="auto is the CPU here: the cpu cases cover it"))])  # auto: the GPU's products
def test_exact_matches_naive_oracle(tmp_path, dtype, tol, block_tokens, device):
    rng = np.random.default_rng(1)
    docs = clustered(rng, 60)
    qs = clustered(rng, 5, length=(4, 4)) + clustered(rng, 2, length=(6, 6))  # two query lengths
    dstore = make_store(tmp_path / "d", [f"d{i}" for i in range(60)], docs)
    qstore = make_store(tmp_path / "q", [f"q{i}" for i in range(7)], qs)
    run = search(qstore, dstore, k=10, mode="exact", dtype=dtype, block_tokens=block_tokens, device=device)
    assert list(run) == [f"q{i}" for i in range(7)]
    for i, q in enumerate(qs):
        truth = {f"d{j}": naive_maxsim(q, d) for j, d in enumerate(docs)}
        for did, score in run[f"q{i}"].items():
            assert score == pytest.approx(truth[did], abs=tol)
        if dtype == "float32":
            assert list(run[f"q{i}"]) == sorted(truth, key=lambda x: -truth[x])[:10]


@pytest.mark.parametrize("mode", ["exact", "hnsw"])
@pytest.mark.parametrize("block_tokens", [50, 10**6])
@pytest.mark.parametrize("tile_elements,tile_rows", [(64, 8), (300, 12), (10**6, 2048)])
def test_tiling_never_changes_scores(tmp_path, monkeypatch, mode, tile_elements, tile_rows, block_tokens):
    # Tiny tiles force many length-sorted sub-blocks (documents of mixed lengths, padded per sub-block)
    # and several query tiles; a float16 store (the default) is gathered and cast per sub-block; a
    # document with no tokens must never appear. Every score must equal the float64 oracle.
    import colbench.retrieve as retrieve

    monkeypatch.setattr(retrieve, "_TILE_ELEMENTS", tile_elements)
    monkeypatch.setattr(retrieve, "_TILE_ROWS", tile_rows)
    rng = np.random.default_rng(3)
    docs = clustered(rng, 40, length=(1, 15)) + [np.zeros((0, 16), np.float32)]
    qs = clustered(rng, 9, length=(4, 4))
    ids = [f"d{i:02d}" for i in range(41)]
    vecs = np.concatenate(docs)
    write_store(tmp_path / "d", ids, [(vecs, np.array([len(d) for d in docs]))], total_tokens=len(vecs), dim=16,
                dtype="float16", meta={"model": "m"})
    dstore = open_store(tmp_path / "d")
    qstore = make_store(tmp_path / "q", [f"q{i}" for i in range(9)], qs)
    index = None
    if mode == "hnsw":
        build_index(dstore, tmp_path / "i")
        index = open_index(tmp_path / "i", dstore)
    run = search(qstore, dstore, k=40, mode=mode, index=index, dtype="float32", tokens_per_query_token=400,
                 ef_search=400, block_tokens=block_tokens)
    stored = [np.asarray(d, np.float16) for d in docs]  # the oracle sees what the store holds
    for i, q in enumerate(qs):
        truth = {ids[j]: naive_maxsim(q, d) for j, d in enumerate(stored[:40])}
        assert list(run[f"q{i}"]) == sorted(truth, key=lambda x: (-truth[x], x))
        for did, score in run[f"q{i}"].items():
            assert score == pytest.approx(truth[did], abs=1e-4)


@pytest.mark.parametrize("mode", ["exact", "hnsw"])
def test_ties_are_broken_by_document_id_even_at_the_cut(tmp_path, mode):
    same = [[0.6, 0.8], [1.0, 0.0]]
    docs = make_store(tmp_path / "d", ["b", "c", "a", "z"], [same, same, same, [[0.0, 1.0]]])
    queries = make_store(tmp_path / "q", ["q"], [[[1.0, 0.0]]])
    index = None
    if mode == "hnsw":
        build_index(docs, tmp_path / "i")
        index = open_index(tmp_path / "i", docs)
    for k, want in ((1, ["a"]), (2, ["a", "b"]), (4, ["a", "b", "c", "z"])):
        run = search(queries, docs, k=k, mode=mode, index=index, dtype="float32", tokens_per_query_token=8)
        assert list(run["q"]) == want


def test_k_larger_than_corpus_returns_every_document_with_a_warning(tmp_path):
    docs = make_store(tmp_path / "d", ["a", "b", "c"], [[[1, 0]], [[0, 1]], [[1, 1]]])
    queries = make_store(tmp_path / "q", ["q"], [[[1, 0]]])
    with pytest.warns(UserWarning, match="returning all"):
        run = search(queries, docs, k=100, mode="exact", dtype="float32")
    assert set(run["q"]) == {"a", "b", "c"}


def test_hnsw_finds_the_exact_top_k_on_clustered_vectors(tmp_path):
    rng = np.random.default_rng(2)
    docs = clustered(rng, 300, dim=32, length=(5, 20))
    qs = clustered(rng, 10, dim=32, length=(8, 8))
    dstore = make_store(tmp_path / "d", [f"d{i:03d}" for i in range(300)], docs)
    qstore = make_store(tmp_path / "q", [f"q{i}" for i in range(10)], qs)
    build_index(dstore, tmp_path / "i", M=12, ef_construction=100)
    index = open_index(tmp_path / "i", dstore)
    exact = search(qstore, dstore, k=10, mode="exact", dtype="float32")
    approx = search(qstore, dstore, k=10, mode="hnsw", index=index, dtype="float32",
                    tokens_per_query_token=64, ef_search=128)
    recall = np.mean([len(set(exact[q]) & set(approx[q])) / 10 for q in exact])
    assert recall >= 0.98
    for q in exact:  # reranked from the store: same scores as exact for the documents both found
        for did in set(exact[q]) & set(approx[q]):
            assert approx[q][did] == pytest.approx(exact[q][did], abs=1e-5)


@pytest.mark.parametrize("case", ["empty_query", "no_index", "other_store_index", "dim", "model", "swapped"])
def test_bad_input_is_refused(tmp_path, case):
    docs = make_store(tmp_path / "d", ["a", "b"], [[[1, 0], [0, 1]], [[1, 1]]])
    other = make_store(tmp_path / "o", ["a", "c"], [[[1, 0], [0, 1]], [[1, 1]]])
    queries = make_store(tmp_path / "q", ["q1", "q2"], [[[1, 0]], np.zeros((0, 2))] if case == "empty_query"
                         else [[[1, 0]], [[0, 1]]])
    kwargs = {"k": 1, "mode": "exact", "dtype": "float32"}
    if case == "no_index":
        kwargs["mode"] = "hnsw"
    elif case == "other_store_index":
        build_index(other, tmp_path / "i")
        kwargs.update(mode="hnsw", index=open_index(tmp_path / "i", other))
    elif case == "dim":
        queries = make_store(tmp_path / "q3", ["q"], [[[1, 0, 0]]])
    elif case == "model":
        queries = make_store(tmp_path / "q4", ["q"], [[[1, 0]]], meta={"model": "another"})
    elif case == "swapped":  # the corpus's store passed as the queries'
        queries = make_store(tmp_path / "q5", ["a"], [[[1, 0]]], meta={"is_query": False})
    with pytest.raises(InputError, match={"empty_query": "q2", "no_index": "needs an index",
                                          "other_store_index": "another store", "dim": "dimension",
                                          "model": "different models", "swapped": "pass the queries' store first"}[case]):
        search(queries, docs, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a CUDA GPU")
def test_a_gpu_asked_for_where_there_is_none_is_refused(tmp_path):
    docs = make_store(tmp_path / "d", ["a"], [[[1, 0]]])
    queries = make_store(tmp_path / "q", ["q"], [[[1, 0]]])
    with pytest.raises(InputError, match="retrieve.device is cuda but torch sees no CUDA GPU"):
        search(queries, docs, k=1, mode="exact", device="cuda")


def test_trec_round_trip_keeps_ranking_and_scores(tmp_path):
    run = {"q2": {"d1": 0.5, "d3": 2.25, "d2": 0.5}, "q1": {"d9": -1.0}}
    write_trec(run, tmp_path / "run.trec", tag="colbench")
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[:3] == ["q2 Q0 d3 1 2.25 colbench", "q2 Q0 d1 2 0.5 colbench", "q2 Q0 d2 3 0.5 colbench"]
    assert read_trec(tmp_path / "run.trec") == run


@pytest.mark.parametrize("text,match", [("q1 Q0 d1 1 abc t\n", "line 1"), ("q1 Q0 d1 1 1.0\n", "line 1"),
                                        ("q1 Q0 d1 1 1.0 t\nq1 Q0 d1 2 0.5 t\n", "twice")])
def test_malformed_trec_file_is_refused(tmp_path, text, match):
    (tmp_path / "run.trec").write_text(text)
    with pytest.raises(InputError, match=match):
        read_trec(tmp_path / "run.trec")


def test_trec_refuses_ids_with_spaces(tmp_path):
    with pytest.raises(InputError, match="whitespace"):
        write_trec({"q 1": {"d": 1.0}}, tmp_path / "run.trec", tag="t")
    assert not (tmp_path / "run.trec").exists()


def test_the_tradeoff_sweep_scores_exact_search_and_each_ef_on_the_same_queries(tmp_path):
    # What 05_retrieve writes to reports/metrics/tradeoff.json: exact search is the reference point, each ef_search
    # of hnsw is timed and scored on the same queries, with its overlap with exact search's top k.
    from colbench import tradeoff
    from colbench.atomic import read_json

    rng = np.random.default_rng(3)
    docs = clustered(rng, 100, dim=16, length=(3, 8))
    dstore = make_store(tmp_path / "d", [f"d{i:03d}" for i in range(100)], docs)
    qstore = make_store(tmp_path / "q", [f"q{i}" for i in range(8)], clustered(rng, 8, dim=16, length=(4, 4)))
    build_index(dstore, tmp_path / "i", M=12, ef_construction=100)
    exact = search(qstore, dstore, k=10, mode="exact", dtype="float32")
    qrels = {q: {next(iter(hits)): 1, f"d{int(q[1:]):03d}": 1} for q, hits in exact.items()}
    points = tradeoff.sweep(qstore, dstore, open_index(tmp_path / "i", dstore), qrels, k=10, ef_values=[4, 256],
                            tokens_per_query_token=4, dtype="float32", block_tokens=4096, ignore_identical_ids=False)
    assert [(p["mode"], p["setting"]) for p in points] == [("exact", "exact"), ("hnsw", 4), ("hnsw", 256)]
    reference, *hnsw = points
    assert reference["recall_vs_exact@10"] == 1.0 and 0 < reference["ndcg@10"] < 1
    index = open_index(tmp_path / "i", dstore)
    for point in hnsw:  # each point is what that ef_search gives: its run's overlap with exact search's
        run = search(qstore, dstore, k=10, mode="hnsw", index=index, dtype="float32", tokens_per_query_token=4,
                     ef_search=point["setting"])
        assert point["recall_vs_exact@10"] == pytest.approx(tradeoff.overlap(run, exact))
        assert point["qps"] > 0
    # 4 tokens per query token gather fewer candidates than exact search scores; a wide search still finds the
    # documents that decide NDCG@10 here.
    assert hnsw[-1]["recall_vs_exact@10"] < 1 and hnsw[-1]["ndcg@10"] == pytest.approx(reference["ndcg@10"])

    # overlap: the share of the reference's top-k found, averaged over the reference's queries.
    assert tradeoff.overlap({"a": {"x": 1.0, "y": 0.5}}, {"a": {"x": 1.0, "z": 0.9}, "b": {"w": 1.0}}) == 0.25
    tradeoff.write({"toy": points}, tmp_path / "tradeoff.json", chosen=256)
    written = read_json(tmp_path / "tradeoff.json")
    assert written["chosen"] == 256 and [p["dataset"] for p in written["points"]] == ["toy"] * 3
