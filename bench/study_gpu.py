"""The study's stages after training, timed at the study's sizes on one GPU machine, added to training's time.

Every stage runs colbench's own functions with params.yaml's settings (`colbench.config.load_params`), on
synthetic text, with ModernBERT-base's architecture at random weights (built offline as in
bench/train_gpu.py; speed depends on shapes, not on weights) wrapped as the study's ColBERT
(`colbench.model.build_colbert` with `train.model`). The four BEIR test sets are given their sizes and
mean lengths (BEIR paper, Table 1: documents / queries / mean words per document / per query): FiQA
57,638 / 648 / 132.3 / 10.8, ArguAna 8,674 / 1,406 / 166.8 / 193.0, NFCorpus 3,633 / 323 / 232.3 / 3.3,
SciFact 5,183 / 300 / 213.6 / 12.4. Word counts are lognormal with those means (sigma 0.6 for documents,
0.4 for queries), in bench/train_gpu.py's English-like text (about 1.3 tokens per word).

Stages, what is measured and how it is projected to the study's size (each row of the output says so):

- encode (`colbench.encode.encode_to_store`: the model's encode, batches sorted by length, `encode.batch_size`,
  `encode.dtype`, `encode.autocast_bf16` as params.yaml sets it): ``--fraction`` of each set's documents and
  all its queries, timed per set. Each call also pays costs that do not grow with its inputs (the model's
  fingerprint, a sha256 over its weights; the store's files), which the pipeline pays once per call too: they
  are measured apart, as the best of two calls on one short document, and the projection per set is that
  fixed time + (measured - fixed) / items x the set's items. The mean tokens per document measured here also
  give each set's token-vector count at full size. One more row encodes FiQA documents with the other
  autocast setting, projected the same way with FiQA's rate for every set: an alternative, not in the total.
- index (`colbench.index.build_index`, params.yaml's M=64, ef_construction=200, float32, `index.num_threads`
  (-1: all cores)): built on the first FiQA documents up to ``--index-vectors`` token vectors, and on half as
  many. HNSW insertion costs about log n per vector, so the projection is T(N) = T(n) x (N ln N - N) /
  (n ln n - n) per set (linear extrapolation is shown beside it, and both models' prediction of the half
  build against its measured time).
- retrieve (`colbench.retrieve.search`, params.yaml's `retrieve` settings), FiQA's queries on that indexed
  FiQA subset: ``hnsw`` (k=100, ef_search=200, 100 tokens per query token, float32 MaxSim rerank) and
  ``exact``. hnsw = token search + rerank; the token search (`TokenIndex.nearest_docs`, timed alone) is
  projected with log N; the rerank with the candidates per query: at most 32 x 100 = 3,200 documents (or the
  set's size) at full size against the mean measured here, an upper bound. exact is linear in queries x
  document tokens. The pipeline's retrieve stage runs hnsw, then `colbench.tradeoff.sweep` (exact and hnsw at
  each `retrieve.tradeoff_ef_search`): projected as exact + (1 + 4) hnsw, an upper bound (a smaller ef is
  cheaper). MaxSim's products run where `retrieve.device` says (the study's `auto`: the GPU); one more row
  runs exact search on the CPU cores, with the share of its top 100 the GPU's run found (not in the total).
- evaluate (`colbench.evaluate.evaluate_protocols`) of the hnsw run against synthetic qrels: per query, linear.
- train, held-out evaluations (``train.eval``: NanoBEIR's 13 subsets, 56,723 documents and 649 queries, encoded
  anew at step 0, every 5,000 steps and at the end: 12 times), which bench/train_gpu.py's rate leaves out: the
  encode rows' time per FiQA document and query x NanoBEIR's.
- prepare from a warm cache, and what the train stage costs beside its steps (start-up, loading the distillation
  set, saving; run for 3 steps of a tiny model): CPU and disk work, measured at the study's size by
  bench/prepare_cpu.py on the machine its result names (``--prepare-json``, by default the
  committed reports/bench/prepare_cpu.json), added as measured.
- train: read from bench/train_gpu.py's JSON (``--train-json``): params.yaml's configuration and the fastest of
  its finished rows (a sweep stopped early writes ``"complete": false``; its finished rows are used and the
  output says so). A file in another format (an old one) or, with ``--run-id``, of another run is not used:
  the output says why and projects no training.

The result files are written after each of encode, index and retrieve too (``"complete": false``, the output
says where it stopped), so a run stopped by bench/gpu.sh's timeout keeps what it measured.

Not timed: downloads, the report stage, the training's checkpoints (11 of about 1.8 GB written: every 5,000 steps
and at the end). Indexing and
the token search run on the CPU cores (16 on the H200 machine), as in the pipeline.

    python bench/study_gpu.py                      # one H200: about 2 minutes, reports/bench/study_gpu.*
    python bench/study_gpu.py --budget 100         # what bench/gpu.sh passes: the seconds it has left
    python bench/study_gpu.py --smoke              # CPU, tiny model, tiny sizes, into /tmp: checks that it runs
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu import (  # noqa: E402
    REPO,
    SMOKE_OUT,
    STUDY_QUERIES,
    TARGET_QUERIES_PER_S,
    set_environment,
    synthetic_text,
    words_lognormal,
    write_modernbert_base,
)

TARGET_HOURS = 3.0
# sentence-transformers/NanoBEIR-en, the study's held-out set: documents and queries over its 13 subsets (ClimateFEVER
# 3,408, DBPedia 6,045, FEVER 4,996, FiQA2018 4,598, HotpotQA 5,090, MSMARCO 5,043, NFCorpus 2,953, NQ 5,035,
# QuoraRetrieval 5,046, SCIDOCS 2,210, ArguAna 3,635, SciFact 2,919, Touche2020 5,745 documents; 50 queries each,
# 49 for Touche2020).
NANOBEIR = (56_723, 649)
# name: (documents, test queries, mean words per document, mean words per query); BEIR paper, Table 1.
DATASETS = {
    "fiqa": (57_638, 648, 132.3, 10.8),
    "arguana": (8_674, 1_406, 166.8, 193.0),
    "nfcorpus": (3_633, 323, 232.3, 3.3),
    "scifact": (5_183, 300, 213.6, 12.4),
}


def texts(rng: random.Random, n: int, mean_words: float, sigma: float) -> list[str]:
    return [synthetic_text(rng, words_lognormal(rng, mean_words, sigma, 1, round(6 * mean_words))) for _ in range(n)]


def nlogn(n: float) -> float:
    """Integral of ln n: the cost of n HNSW insertions when one costs about log of the graph's size."""
    return n * math.log(n) - n


def head_store(store, max_tokens: int, path: Path):
    """A store of ``store``'s first documents holding at most ``max_tokens`` token vectors (at least one document)."""
    from colbench.store import open_store, write_store

    n = max(1, int(np.searchsorted(store.offsets[1:], max_tokens, side="right")))
    vectors = np.asarray(store.vectors[: store.offsets[n]], dtype=np.float32)
    write_store(path, store.ids[:n], [(vectors, store.lengths[:n])], total_tokens=int(store.offsets[n]), dim=store.dim,
                dtype=store.dtype, meta=store.meta)
    return open_store(path)


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def run(options: argparse.Namespace, work: Path, save) -> dict:
    """Measure every stage; ``save(result)`` is called after each one (with ``complete`` false until the end), so
    that a run stopped by its timeout keeps the stages it finished."""
    import torch

    from colbench.config import load_params
    from colbench.encode import encode_to_store
    from colbench.evaluate import evaluate_protocols
    from colbench.index import build_index, open_index
    from colbench.model import build_colbert
    from colbench.retrieve import search
    from colbench.store import open_store
    from colbench.tradeoff import overlap

    started = time.monotonic()

    def left() -> float:
        return options.budget - (time.monotonic() - started)

    params = load_params(REPO / "params.yaml")
    enc, ix, rt = params.encode, params.index, params.retrieve
    base = write_modernbert_base(work / f"modernbert-{options.model_size}", options.tokenizer, options.model_size)
    model = build_colbert(str(base), **dataclasses.asdict(params.train.model), seed=params.train.seed, device=options.device)
    rng = random.Random(0)
    stages, sets = [], {}
    result = {
        "bench": "study_gpu",
        "complete": False,
        "device": torch.cuda.get_device_name(0) if options.device == "cuda" else "cpu (smoke: numbers mean nothing)",
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "model_size": options.model_size,
        "fraction": options.fraction,
        "datasets": sets,
        "stages": stages,
    }

    def encode(ids, items, out, is_query, bf16=enc.autocast_bf16):
        return encode_to_store(model, ids, items, out, is_query=is_query, batch_size=enc.batch_size, dtype=enc.dtype,
                               autocast_bf16=bf16, show_progress=False)

    # ---- encode: a fraction of every set's documents, all its queries (params.yaml's autocast). A first, untimed
    # call pays for CUDA's start (context, cuBLAS, kernel selection), which the pipeline pays once too.
    encode([f"w{i}" for i in range(64)], texts(rng, 64, 60, 0.6), work / "warmup", False)
    # What a call costs whatever its size (the model fingerprint hashes all the weights; the store's files):
    # a call on one short document, the faster of two. The pipeline pays it once per call, not per item.
    fixed = min(encode(["f"], ["a short document"], work / f"fixed{i}", False)["seconds"] for i in range(2))

    def project(seconds: float, measured: int, items: int, calls: int = 1) -> float:
        """Full-size time: the fixed cost of each call + the rest of the measured time, per item, x ``items``."""
        return calls * fixed + max(0.0, seconds - fixed) / measured * items

    for name, (n_docs, n_queries, doc_words, query_words) in DATASETS.items():
        m_docs = max(options.min_docs, round(n_docs * options.fraction))
        m_queries = min(n_queries, options.max_queries or n_queries)
        docs = encode([f"d{i}" for i in range(m_docs)], texts(rng, m_docs, doc_words, 0.6), work / name / "docs", False)
        queries = encode([f"q{i}" for i in range(m_queries)], texts(rng, m_queries, query_words, 0.4),
                         work / name / "queries", True)
        sets[name] = {"autocast_bf16": docs["autocast_bf16"], "documents": n_docs, "queries": n_queries, "measured_documents": m_docs,
                      "measured_queries": m_queries, "documents_s": docs["seconds"], "queries_s": queries["seconds"],
                      "tokens_per_document": docs["n_tokens"] / m_docs, "truncated_share": docs["n_truncated"] / m_docs,
                      "token_vectors": round(n_docs * docs["n_tokens"] / m_docs)}
        print(f"study_gpu: encoded {name}: {m_docs} documents in {docs['seconds']:.1f} s "
              f"({docs['n_tokens'] / m_docs:.0f} tokens each), {m_queries} queries in {queries['seconds']:.1f} s", flush=True)
    measured = sum(s["measured_documents"] for s in sets.values())
    seconds = sum(s["documents_s"] for s in sets.values())
    autocast = "bf16 autocast" if sets["fiqa"]["autocast_bf16"] else "no autocast"
    setting = f"params.yaml's encode.autocast_bf16 {str(enc.autocast_bf16).lower()}"
    how = f"per set: {fixed:.2f} s fixed per call (one-document call: model fingerprint, store files) + per item x items"
    all_docs = sum(s["documents"] for s in sets.values())
    stages.append({"stage": f"encode documents ({autocast}: {setting})",
                   "measured": f"{measured:,} documents of the four sets",
                   "seconds": seconds, "rate": f"{measured / seconds:,.0f} documents/s",
                   "study_items": f"{all_docs:,} documents",
                   "projected_s": sum(project(s["documents_s"], s["measured_documents"], s["documents"]) for s in sets.values()),
                   "method": how, "in_total": True})
    measured = sum(s["measured_queries"] for s in sets.values())
    seconds = sum(s["queries_s"] for s in sets.values())
    stages.append({"stage": f"encode queries ({autocast})", "measured": f"{measured:,} queries", "seconds": seconds,
                   "rate": f"{measured / seconds:,.0f} queries/s",
                   "study_items": f"{sum(s['queries'] for s in sets.values()):,} queries",
                   "projected_s": sum(project(s["queries_s"], s["measured_queries"], s["queries"]) for s in sets.values()),
                   "method": how, "in_total": True})
    # The other autocast setting, as an alternative: the total follows params.yaml.
    m = min(2000, sets["fiqa"]["measured_documents"])
    alt = encode([f"d{i}" for i in range(m)], texts(rng, m, DATASETS["fiqa"][2], 0.6), work / "fiqa-alt", False,
                 bf16=not enc.autocast_bf16)
    stages.append({"stage": f"encode documents, {'bf16 autocast' if alt['autocast_bf16'] else 'no autocast'} "
                            f"(alternative to {setting})",
                   "measured": f"{m:,} FiQA documents", "seconds": alt["seconds"],
                   "rate": f"{m / alt['seconds']:,.0f} documents/s", "study_items": f"{all_docs:,} documents",
                   "projected_s": project(alt["seconds"], m, all_docs, calls=len(sets)),
                   "method": f"{fixed:.2f} s fixed per call x {len(sets)} sets + FiQA's time per document x every "
                             "set's documents; not in the total", "in_total": False})
    result["encode_fixed_s_per_call"] = fixed
    held_out = held_out_evaluations(params, sets, fixed)
    if held_out:
        stages.append(held_out)
    save(result)

    # ---- index: the first FiQA documents up to --index-vectors token vectors, and half as many.
    fiqa = open_store(work / "fiqa" / "docs")
    index_kwargs = dict(space=ix.space, M=ix.M, ef_construction=ix.ef_construction, storage=ix.storage,
                        seed=params.base.seed, num_threads=ix.num_threads)
    half = head_store(fiqa, options.index_vectors // 2, work / "fiqa-half")
    built_half = build_index(half, work / "index-half", **index_kwargs)
    sub, built = half, built_half
    # The full build takes a little over twice the half's: skip it when the budget cannot hold it.
    if built_half["build_s"] * 2.5 < left() - options.reserve:
        sub = head_store(fiqa, options.index_vectors, work / "fiqa-sub")
        built = build_index(sub, work / "index", **index_kwargs)
    n, t = built["n_vectors"], built["build_s"]
    fit = {"vectors": n, "build_s": t, "half_vectors": built_half["n_vectors"], "half_build_s": built_half["build_s"],
           "half_predicted_s_log": t * nlogn(built_half["n_vectors"]) / nlogn(n),
           "half_predicted_s_linear": t * built_half["n_vectors"] / n}
    total_vectors = sum(s["token_vectors"] for s in sets.values())
    stages.append({"stage": f"index (Voyager M={ix.M}, ef_construction={ix.ef_construction}, {ix.storage}, "
                            f"num_threads={ix.num_threads})",
                   "measured": f"{n:,} FiQA token vectors", "seconds": t, "rate": f"{n / t:,.0f} vectors/s",
                   "study_items": f"{total_vectors:,} token vectors",
                   "projected_s": sum(t * nlogn(s["token_vectors"]) / nlogn(n) for s in sets.values()),
                   "projected_s_linear": t * total_vectors / n,
                   "method": "per-vector cost growing with log n (linear: see projected_s_linear)", "in_total": True})
    print(f"study_gpu: indexed {n:,} vectors in {t:.1f} s (half: {built_half['n_vectors']:,} in "
          f"{built_half['build_s']:.1f} s)", flush=True)
    result["index_fit"] = fit
    save(result)

    # ---- retrieve on that subset, with FiQA's queries.
    queries = open_store(work / "fiqa" / "queries")
    token_index = open_index(work / ("index" if sub is not half else "index-half"), sub)
    search_kwargs = dict(k=rt.k, ef_search=rt.ef_search, tokens_per_query_token=rt.tokens_per_query_token,
                         dtype=rt.maxsim_dtype, block_tokens=rt.block_tokens, device=rt.device)
    run_hnsw, t_hnsw = timed(search, queries, sub, mode="hnsw", index=token_index, **search_kwargs)
    nearest, t_near = timed(token_index.nearest_docs, np.array(queries.vectors, dtype=np.float32),
                            rt.tokens_per_query_token, rt.ef_search)
    candidates = float(np.mean([len(np.unique(nearest[queries.offsets[i]: queries.offsets[i + 1]]))
                                for i in range(len(queries))]))
    run_exact, t_exact = timed(search, queries, sub, mode="exact", **search_kwargs)
    run_exact_cpu, t_exact_cpu = timed(search, queries, sub, mode="exact", **{**search_kwargs, "device": "cpu"})
    nq = len(queries)
    max_candidates = params.train.model.query_length * rt.tokens_per_query_token  # the union's upper bound
    hnsw_s = sum(s["queries"] / nq * (t_near * math.log(s["token_vectors"]) / math.log(n)
                                      + max(0.0, t_hnsw - t_near) * min(max_candidates, s["documents"]) / candidates)
                 for s in sets.values())
    exact_s = t_exact * sum(s["queries"] * s["token_vectors"] for s in sets.values()) / (nq * sub.n_tokens)
    all_queries = sum(s["queries"] for s in sets.values())
    on = f"{nq:,} FiQA queries, {len(sub):,} documents ({sub.n_tokens:,} vectors)"
    stages.append({"stage": f"retrieve hnsw (ef_search={rt.ef_search}, {rt.tokens_per_query_token} tokens per query token)",
                   "measured": on, "seconds": t_hnsw, "rate": f"{nq / t_hnsw:,.0f} queries/s",
                   "study_items": f"{all_queries:,} queries", "projected_s": hnsw_s,
                   "method": f"token search ({t_near:.2f} s) x log N; rerank x {max_candidates:,} (or the set's size) / "
                             f"{candidates:,.0f} measured candidates per query: upper bound", "in_total": False})
    stages.append({"stage": "retrieve exact on the CPU cores (retrieve.device: cpu)", "measured": on,
                   "seconds": t_exact_cpu, "rate": f"{nq / t_exact_cpu:,.0f} queries/s",
                   "study_items": f"{all_queries:,} queries", "projected_s": exact_s * t_exact_cpu / t_exact,
                   "method": f"linear; top 100 shared with retrieve.device {rt.device}: "
                             f"{overlap(run_exact, run_exact_cpu):.4f}; not in the total", "in_total": False})
    stages.append({"stage": f"retrieve exact (retrieve.device: {rt.device})", "measured": on, "seconds": t_exact, "rate": f"{nq / t_exact:,.0f} queries/s",
                   "study_items": f"{all_queries:,} queries", "projected_s": exact_s,
                   "method": "linear in queries x document tokens", "in_total": False})
    n_sweep = len(rt.tradeoff_ef_search)
    stages.append({"stage": f"retrieve stage: {rt.mode} + trade-off sweep (exact, hnsw at ef {rt.tradeoff_ef_search})",
                   "measured": f"the hnsw and exact ({rt.device}) rows above", "seconds": None, "rate": "",
                   "study_items": f"{all_queries:,} queries",
                   "projected_s": (1 + n_sweep) * hnsw_s + exact_s if rt.mode == "hnsw" else 2 * exact_s + n_sweep * hnsw_s,
                   "method": "sum of those rows; every ef timed as ef_search: upper bound", "in_total": True})
    print(f"study_gpu: retrieved {nq} queries: hnsw {t_hnsw:.2f} s, exact {t_exact:.2f} s", flush=True)
    result["hnsw"] = {"token_search_s": t_near, "search_s": t_hnsw, "mean_candidates": candidates, "queries": nq}
    save(result)

    # ---- evaluate the hnsw run against synthetic qrels (1-3 relevant documents per query).
    qrels = {qid: {doc: 1 for doc in rng.sample(sub.ids, min(len(sub), rng.randint(1, 3)))} for qid in run_hnsw}
    _, t_eval = timed(evaluate_protocols, run_hnsw, qrels, k_values=params.evaluate.k_values,
                      ignore_identical_ids=params.evaluate.ignore_identical_ids["fiqa"])
    stages.append({"stage": "evaluate (both identical-id protocols)", "measured": f"{nq:,} FiQA queries", "seconds": t_eval,
                   "rate": f"{nq / t_eval:,.0f} queries/s", "study_items": f"{all_queries:,} queries",
                   "projected_s": t_eval * all_queries / nq, "method": "linear", "in_total": True})

    result.update(complete=True, wall_s=time.monotonic() - started)
    return result


def held_out_evaluations(params, sets: dict, fixed: float) -> dict | None:
    """The train stage's held-out evaluations (``train.eval``), which bench/train_gpu.py's rate leaves out: at step 0,
    every ``eval.steps`` steps and at the end, each encoding the held-out set's documents and queries anew. Projected
    with the encode rows' time per item (FiQA's, or the set's own when ``eval.dataset`` is one of them); the MaxSim
    over a few thousand documents per query set is left out."""
    from colbench.train import planned_steps, training_arguments

    ev = params.train.eval
    if ev.dataset is None or (ev.dataset != "nanobeir" and ev.dataset not in sets):
        return None
    # The trainer's own arithmetic, as the train stage plans its run. Its arguments switch TF32 on for the whole
    # process on a GPU (tf32: auto): the stages timed after this one would run their float32 MaxSim in TF32, unlike
    # the pipeline's retrieve stage (a process of its own).
    with tempfile.TemporaryDirectory() as scratch, float32_precision_kept():
        args = training_arguments(dataclasses.asdict(params.train.args), output_dir=scratch, seed=params.train.seed,
                                  micro_batch=params.train.micro_batch)
        steps = planned_steps(args, STUDY_QUERIES)
    evaluations = 1 + steps // ev.steps + (steps % ev.steps > 0)
    rates = sets["fiqa" if ev.dataset == "nanobeir" else ev.dataset]
    docs, queries = NANOBEIR if ev.dataset == "nanobeir" else (rates["documents"], rates["queries"])
    once = (max(0.0, rates["documents_s"] - fixed) / rates["measured_documents"] * docs
            + max(0.0, rates["queries_s"] - fixed) / rates["measured_queries"] * queries)
    return {"stage": f"train: held-out evaluations (train.eval: {ev.dataset}, every {ev.steps:,} steps)",
            "measured": "the encode rows above", "seconds": None, "rate": f"{once:.1f} s each",
            "study_items": f"{evaluations} evaluations of {docs:,} documents, {queries:,} queries",
            "projected_s": evaluations * once,
            "method": f"{'FiQA' if ev.dataset == 'nanobeir' else ev.dataset}'s encoding time per document and per query "
                      "x the set's; MaxSim left out", "in_total": True}


@contextlib.contextmanager
def float32_precision_kept():
    """torch's float32 precision as it was before the block: transformers sets the process-wide
    ``torch.backends.fp32_precision`` (torch >= 2.9), `colbench.train` the matmul precision."""
    import torch

    backends, matmul = getattr(torch.backends, "fp32_precision", None), torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        if backends is not None:
            torch.backends.fp32_precision = backends
        torch.set_float32_matmul_precision(matmul)


def add_cpu_stages(result: dict, prepare_json: Path) -> None:
    """The rows of bench/prepare_cpu.py's result (the prepare stage from a warm cache; the train stage run for 3 steps
    of a tiny model: what it costs beside its steps), measured on the machine it names; a missing or partial file
    adds a row saying so."""
    data = json.loads(prepare_json.read_text()) if prepare_json.is_file() else {}
    if data.get("bench") != "prepare_cpu" or not data.get("complete") or data.get("scale") != 1:
        result["stages"].append({"stage": "prepare from a warm cache; train stage beside its steps",
                                 "measured": f"not measured: no full-size result in {prepare_json}", "seconds": None,
                                 "rate": "", "study_items": "", "projected_s": 0.0,
                                 "method": "bench/prepare_cpu.py measures both", "in_total": False})
        return
    where = f"{data['machine']} ({data['cpus']} CPUs), {data['date']}: bench/prepare_cpu.py"
    for label, seconds in (("prepare from a warm cache (CPU)", data["warm_prepare_s"]),
                           ("train stage beside its steps: start-up, distillation set, saving (CPU)",
                            data["train_stage_s"])):
        result["stages"].append({"stage": label, "measured": f"the study's size, synthetic, on {where}",
                                 "seconds": seconds, "rate": "", "study_items": "the study's size",
                                 "projected_s": seconds, "method": "measured at full size on that machine",
                                 "in_total": True})


def read_training(train_json: Path, run_id: str | None) -> tuple[dict, str | None]:
    """bench/train_gpu.py's result, or ``({}, why it is not used)``.

    Only the current format is read (a sweep with ``complete`` and ``configs``): an older file, such as a
    committed single-configuration one, must not pass for a measurement of this run. With ``run_id`` (bench/gpu.sh
    passes its own) a file of another run is refused too.
    """
    if not train_json.is_file():
        return {}, f"no {train_json} (bench/train_gpu.py did not write one)"
    try:
        data = json.loads(train_json.read_text())
    except ValueError as error:
        return {}, f"{train_json} is not JSON ({error})"
    if data.get("bench") != "train_gpu" or "complete" not in data or not isinstance(data.get("configs"), list):
        return {}, f"{train_json} is not in bench/train_gpu.py's current format (an older result?): not used"
    if run_id is not None and data.get("run_id") != run_id:
        return {}, f"{train_json} is from another run (run_id {data.get('run_id')!r}, not {run_id!r}): not used"
    return data, None


def add_training(result: dict, train_json: Path, run_id: str | None = None) -> None:
    """Training rows from bench/train_gpu.py's JSON (its finished rows, if the sweep was stopped early), and the
    totals against the targets."""
    data, refused = read_training(train_json, run_id)
    ok = [r for r in data.get("configs", []) if r.get("status") == "ok"]
    first = ok[0] if ok and ok[0]["name"].startswith("params.yaml") else None
    best = max(ok, key=lambda r: r["queries_per_s"]) if ok else None
    result["training"] = {"source": str(train_json), "refused": refused, "complete": data.get("complete"),
                          "run_id": data.get("run_id"), "finished_rows": len(ok),
                          "params_yaml": first and first["queries_per_s"],
                          "best": best and {"name": best["name"], "queries_per_s": best["queries_per_s"]},
                          "target_queries_per_s": TARGET_QUERIES_PER_S}
    for label, row in (("train, params.yaml (4 x 4)", first), (f"train, fastest ({best['name']})" if best else "", best)):
        if row is not None and not (label.startswith("train, fastest") and row is first):
            result["stages"].append({
                "stage": label, "measured": f"{row['steps_timed']} optimizer steps", "seconds": None,
                "rate": f"{row['queries_per_s']:.1f} queries/s (target {TARGET_QUERIES_PER_S})",
                "study_items": f"{STUDY_QUERIES:,} queries", "projected_s": STUDY_QUERIES / row["queries_per_s"],
                "method": "linear (bench/train_gpu.py)", "in_total": row is best, "training_rate": True})  # the fastest counts in the total
    other = sum(s["projected_s"] for s in result["stages"] if s["in_total"] and not s.get("training_rate"))
    result["total_hours"] = {
        "without_training": other / 3600,
        "with_fastest_training": (other + STUDY_QUERIES / best["queries_per_s"]) / 3600 if best else None,
        "with_params_yaml_training": (other + STUDY_QUERIES / first["queries_per_s"]) / 3600 if first else None,
        "target": TARGET_HOURS,
    }


def markdown(result: dict) -> str:
    def hours(seconds):
        return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"

    lines = [
        "# The study's stages on one GPU machine",
        "",
        f"{result['device']}, {result['cpu_cores']} CPU cores; ModernBERT-{result['model_size']} architecture at random "
        "weights as the study's ColBERT, params.yaml's settings, synthetic text at the four BEIR sets' sizes and "
        f"lengths; {result['fraction']:.1%} of each set's documents encoded (see bench/study_gpu.py).",
        "",
        "| stage | measured on | measured | rate | at the study's size | projected | how | in total |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in result["stages"]:
        measured = "" if s["seconds"] is None else f"{s['seconds']:.2f} s"
        lines.append(f"| {s['stage']} | {s['measured']} | {measured} | "
                     f"{s['rate']} | {s['study_items']} | {hours(s['projected_s'])} | {s['method']} | "
                     f"{'yes' if s['in_total'] else ''} |")
    total = result["total_hours"]
    lines += ["", f"Without training's steps: {total['without_training']:.2f} h."]
    for key, label in (("with_fastest_training", "the fastest training configuration"),
                       ("with_params_yaml_training", "params.yaml's training configuration")):
        if total[key] is not None and not result["complete"]:
            lines.append(f"With {label}: more than {total[key]:.2f} h (the stages not reached are missing).")
        elif total[key] is not None:
            verdict = "met" if total[key] <= total["target"] else "missed"
            lines.append(f"With {label}: **{total[key]:.2f} h** against the {total['target']:.0f}-hour target: {verdict}.")
    train = result["training"]
    if train["refused"]:
        lines.append(f"Training: not projected: {train['refused']}.")
    elif train["best"]:
        lines.append(f"Training: {train['best']['queries_per_s']:.1f} queries/s at best against the target "
                     f"{train['target_queries_per_s']} ({train['best']['queries_per_s'] / train['target_queries_per_s']:.0%}).")
    else:
        lines.append(f"Training: no configuration finished in {train['source']}.")
    if not train["refused"] and train["complete"] is False:
        lines.append(f"The training sweep was stopped early: its {train['finished_rows']} finished configuration(s) "
                     "are used, a faster one may not have run.")
    if not result["complete"]:
        lines.append(f"**Incomplete**: the run stopped after the stages above (the last one: {result['last_measured_stage']}"
                     "); the totals leave out the stages it did not reach.")
    fit = result.get("index_fit")
    if fit:
        lines += ["", f"Index build model check: {fit['half_vectors']:,} vectors took {fit['half_build_s']:.1f} s; from "
                      f"the {fit['vectors']:,}-vector build, log n predicts {fit['half_predicted_s_log']:.1f} s and linear "
                      f"{fit['half_predicted_s_linear']:.1f} s."]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help=f"where study_gpu.json / .md go (default reports/bench; with --smoke {SMOKE_OUT})")
    parser.add_argument("--train-json", type=Path, help="bench/train_gpu.py's result (default: train_gpu.json in --out-dir)")
    parser.add_argument("--prepare-json", type=Path, default=REPO / "reports" / "bench" / "prepare_cpu.json",
                        help="bench/prepare_cpu.py's result (the prepare stage and the train stage beside its steps, "
                             "measured on a CPU machine; default: the committed one)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, tiny sizes, output to a temporary folder")
    parser.add_argument("--fraction", type=float, default=0.05, help="share of each set's documents encoded")
    parser.add_argument("--min-docs", type=int, default=100, help="documents encoded per set at least")
    parser.add_argument("--max-queries", type=int, help="queries encoded per set at most (default: all)")
    parser.add_argument("--index-vectors", type=int, default=150_000, help="FiQA token vectors indexed (and half as many)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds; the larger index build is skipped "
                                                                    "when it would not fit (bench/gpu.sh: the time it has left)")
    parser.add_argument("--run-id", help="use only a train_gpu.json of this run (bench/gpu.sh passes the one it gave "
                                         "train_gpu.py)")
    parser.add_argument("--reserve", type=float, default=25.0, help="seconds kept for retrieval and evaluation")
    parser.add_argument("--model-size", choices=("base", "tiny"), default="base")
    parser.add_argument("--work", type=Path, help="folder for the model and stores (default: a new temporary one)")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "tests/fixtures/pylate/modernbert/base")
    options = parser.parse_args(argv)
    set_environment(smoke=options.smoke)
    if options.smoke:
        options.device, options.model_size = "cpu", "tiny"
        options.fraction, options.min_docs, options.index_vectors = min(options.fraction, 0.003), 20, 4000
        options.max_queries = options.max_queries or 30
    out_dir = options.out_dir or (SMOKE_OUT if options.smoke else REPO / "reports" / "bench")
    if options.smoke and out_dir.resolve() == (REPO / "reports" / "bench").resolve():
        parser.error("--smoke numbers must not replace the committed reports/bench results: choose another --out-dir")
    import torch

    if options.device == "cuda" and not torch.cuda.is_available():
        print(f"study_gpu: no CUDA device visible (torch {torch.__version__}). Run it on a GPU machine, or "
              "smoke-test it with --smoke.", file=sys.stderr)
        return 2
    from colbench.atomic import write_json, write_text
    from colbench.provenance import provenance

    work = options.work or Path(tempfile.mkdtemp(prefix="colbench-study-gpu-"))
    for name in (*DATASETS, "warmup", "fixed0", "fixed1", "fiqa-alt", "fiqa-half", "fiqa-sub", "index-half", "index"):
        shutil.rmtree(work / name, ignore_errors=True)  # stores and indexes of an earlier run in the same --work
    recorded = provenance(REPO)

    def save(measured: dict) -> dict:
        result = copy.deepcopy(measured)  # the training rows are added to a copy: `run` keeps appending stages
        result["last_measured_stage"] = result["stages"][-1]["stage"]
        add_cpu_stages(result, options.prepare_json)
        add_training(result, options.train_json or out_dir / "train_gpu.json", options.run_id)
        result["provenance"] = recorded
        write_json(out_dir / "study_gpu.json", result)
        write_text(out_dir / "study_gpu.md", markdown(result))
        return result

    result = save(run(options, work, save))
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)
    print(markdown(result))
    print(f"study_gpu: wrote {out_dir / 'study_gpu.json'} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
