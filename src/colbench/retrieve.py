"""MaxSim retrieval over an embedding store, exhaustive (``exact``) or through a Voyager index (``hnsw``).

MaxSim(q, d) = sum over query tokens of the max over document tokens of their dot product. Both modes
return an id-keyed run ``{query_id: {doc_id: score}}`` holding the top ``k`` documents in rank order.

* ``exact`` scores every document. The store is read front to back in blocks of about ``block_tokens``
  token vectors; within a block documents are sorted by length and cut into sub-blocks of similar length
  (padding stays small). Each sub-block is gathered, cast to ``dtype`` and multiplied by the packed query
  tokens of many queries at once, one tile of the similarity matrix at a time, which is reduced at once:
  max over each document's tokens (on the bits of the floats as integers, see ``_max_over_tokens``), sum
  over each query's tokens. Memory stays bounded by one tile and the score matrix of one query batch; the
  store stays memory-mapped.
* ``hnsw`` asks the index for the ``tokens_per_query_token`` nearest document tokens of every query token,
  takes the union of their documents as candidates and reranks them with exact MaxSim from the store.

Padding never wins a max: a document shorter than its sub-block is padded with copies of its own last token
(not zero vectors), so the max over the padded row equals the max over its real tokens. PyLate pads with
zero vectors without a mask, so there a padded position scores 0 and wins whenever a query token's best
real similarity is negative: its scores for short documents can be higher than the true MaxSim.

The products run on ``device``: the CPU, or a CUDA GPU (``auto``: the GPU when there is one). The store stays
in host memory either way; each sub-block is gathered there and sent to the GPU, so GPU memory holds one
sub-block, the query tiles and one product at a time.

Ties are broken by document id (ascending string order), also at the k-th place. ``k`` larger than the
number of documents returns every document (with a warning); ``hnsw`` returns fewer than ``k`` when the
candidates are fewer. Documents with no token vectors cannot be scored and never appear.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from colbench.errors import InputError
from colbench.index import TokenIndex
from colbench.store import EmbeddingStore, same_model

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Tile sizes, measured on a 2-core Sapphire Rapids (AMX bf16, 2 MiB L2 per core) with bench/retrieval.py:
# exact bf16 search ran at 830 / 975 / 1020 / 960 / 860 GFLOP/s on CISI (634 / 813 / 1070 / 1151 / 876 on
# the 50k synthetic corpus) with similarity tiles of 2M / 4M / 8M / 16M / 24M elements: large products
# amortise the per-call cost until the tile stops fitting the caches. Other values only cost speed.
_TILE_ELEMENTS = 4096 * 2048  # similarity tile (document tokens x query tokens), bf16
_MAX_SUB_TOKENS = 16384  # padded document tokens per product when few query tokens are scored (hnsw rerank)
_TILE_ROWS = 2048  # query tokens per product (64 queries of 32 tokens)
_SCORES_BYTES = 256 << 20  # score matrix of one query batch in exact mode


def search(query_store: EmbeddingStore, doc_store: EmbeddingStore, *, k: int = 100, mode: str = "hnsw",
           index: TokenIndex | None = None, ef_search: int = 64, tokens_per_query_token: int = 32,
           dtype: str = "bfloat16", block_tokens: int = 262144, device: str = "cpu") -> dict[str, dict[str, float]]:
    """Top-``k`` MaxSim documents of ``doc_store`` for every query of ``query_store`` (see the module docstring).

    ``dtype`` is the type of the matrix products in both modes (bfloat16 is fast where the CPU has it,
    scores then differ from float32 by about 1e-2); sums are always float32. ``index`` (from
    :func:`colbench.index.open_index`) is required for ``mode="hnsw"``. ``device``: ``cpu``, ``cuda`` or
    ``auto`` (`maxsim_device`).
    """
    _validate(query_store, doc_store, mode=mode, index=index)
    torch_device = maxsim_device(device)
    n_scorable = int((doc_store.lengths > 0).sum())
    if k > n_scorable:
        warnings.warn(f"k={k} is larger than the {n_scorable} documents of {doc_store.path}: returning all of them",
                      stacklevel=2)
    torch_dtype = DTYPES[dtype]
    id_rank = np.empty(len(doc_store), dtype=np.int64)
    id_rank[np.argsort(np.asarray(doc_store.ids, dtype=object), kind="stable")] = np.arange(len(doc_store))
    with torch.inference_mode():
        if mode == "exact":
            return _search_exact(query_store, doc_store, k, torch_dtype, block_tokens, id_rank, torch_device)
        return _search_hnsw(query_store, doc_store, index, k, ef_search, tokens_per_query_token, torch_dtype, id_rank,
                            torch_device)


def maxsim_device(device: str) -> torch.device:
    """Where MaxSim's products run: ``cpu``; ``cuda`` (refused without a CUDA GPU); ``auto``: the GPU if any."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("retrieve.device is cuda but torch sees no CUDA GPU here: set it to auto or cpu "
                         "(or install a CUDA build of torch)")
    if device not in ("cpu", "cuda"):
        raise InputError(f"retrieve.device {device!r}: use auto, cpu or cuda")
    return torch.device(device)


def _validate(query_store, doc_store, *, mode, index):
    if query_store.dim != doc_store.dim:
        raise InputError(f"query store {query_store.path} has dimension {query_store.dim}, document store "
                         f"{doc_store.path} {doc_store.dim}: encode both with the same model")
    q_model, d_model = query_store.meta.get("model"), doc_store.meta.get("model")
    if q_model is not None and d_model is not None and not same_model(q_model, d_model):
        raise InputError(f"query store {query_store.path} and document store {doc_store.path} were encoded by "
                         f"different models ({q_model!r} vs {d_model!r}): rerun the encode stage")
    if query_store.meta.get("is_query") is False or doc_store.meta.get("is_query") is True:
        raise InputError(f"the query store {query_store.path} holds documents or the document store {doc_store.path} "
                         "queries (their manifests' is_query): pass the queries' store first, the corpus's second")
    empty = [query_store.ids[i] for i in np.flatnonzero(query_store.lengths == 0)[:5]]
    if empty:
        raise InputError(f"query store {query_store.path}: queries {empty} have no token vectors (empty text?)")
    if mode == "hnsw":
        if index is None:
            raise InputError("retrieve.mode='hnsw' needs an index: build it with colbench.index.build_index "
                             "and pass open_index(...) as index=, or use mode='exact'")
        if index.manifest.get("store") != doc_store.fingerprint():
            raise InputError(f"index {index.path} was built for another store than {doc_store.path}; rerun the index stage")


def _top_k(scores: np.ndarray, docs: np.ndarray, id_rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (doc, score) by score descending, then document id: exact at the k-th place too."""
    finite = np.isfinite(scores)
    if not finite.all():
        scores, docs = scores[finite], docs[finite]
    if len(scores) > k:
        # Keep everything tied with the k-th score so the id order decides among them, not argpartition.
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = scores >= kth
        scores, docs = scores[keep], docs[keep]
    order = np.lexsort((id_rank[docs], -scores))[:k]
    return docs[order], scores[order]


def _store_tensor(store: EmbeddingStore) -> torch.Tensor:
    """The store's vectors as a zero-copy tensor over the memory map (only ever read)."""
    with warnings.catch_warnings():
        # torch warns that the map is read-only; nothing here writes to it.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(store.vectors)


def _score_sorted(vectors: torch.Tensor, offsets: np.ndarray, lengths: np.ndarray, docs: np.ndarray,
                  q_tiles: list[torch.Tensor], q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """MaxSim, float32 [len(docs), n_queries], of ``docs`` (non-empty, sorted by length) against packed queries.

    ``q_tiles`` are the query tokens, ``dtype``, transposed to [dim, rows] (rows a multiple of ``q_len``), on the
    device the products run on; the result is on the CPU.
    Documents are cut into sub-blocks of similar length and padded with copies of their own last token, so
    padding never changes a max. Each sub-block is gathered from ``vectors`` (the store's rows, any dtype)
    and cast once, multiplied by every query tile, and the product reduced: max over each document's tokens
    (in ``dtype``), then a float32 sum over each query's tokens.
    """
    n_q = sum(t.shape[1] for t in q_tiles) // q_len
    device = q_tiles[0].device
    out = torch.empty((len(docs), n_q), dtype=torch.float32, device=device)
    budget = min(_MAX_SUB_TOKENS, max(16, _TILE_ELEMENTS // max(t.shape[1] for t in q_tiles)))
    doc_len = lengths[docs]
    # One product buffer for every product: a fresh multi-MB tensor each time is served by mmap and paid for
    # in page faults (exact search on CISI ran at 440 instead of 1000 GFLOP/s with it).
    sims = torch.empty(budget * max(t.shape[1] for t in q_tiles), dtype=dtype, device=device)
    start = 0
    while start < len(docs):
        # Sorted by length: the widest document of [start, stop) is the last; at least one per sub-block.
        window = doc_len[start : start + budget]  # a sub-block never holds more than `budget` documents
        stop = start + max(1, int(np.searchsorted(np.arange(1, len(window) + 1) * window, budget, "right")))
        width = int(doc_len[stop - 1])
        pos = np.minimum(np.arange(width)[None, :], doc_len[start:stop, None] - 1)
        rows = (offsets[docs[start:stop], None] + pos).ravel()
        # Products come in few shapes (the budget, or a power of two below it for the last, partial sub-block;
        # the extra rows repeat a real one and are ignored): the BLAS builds a kernel for each new shape, which
        # on CISI cost about 40 % of the search time when every sub-block had its own.
        shape_rows = len(rows) if len(rows) >= budget else min(budget, 1 << (len(rows) - 1).bit_length())
        rows = np.pad(rows, (0, shape_rows - len(rows)), mode="edge")
        # From a float16 store, float16 -> float32 -> bfloat16 is faster than the direct cast in torch 2.13
        # (measured: 555 vs 800 us for 1.8M values) and gives the same values: float32 holds every float16.
        # On a GPU the rows travel in the store's dtype and are cast there.
        d = vectors.index_select(0, torch.from_numpy(rows)).to(device).float().to(dtype)
        used = (stop - start) * width
        col = 0
        for tile in q_tiles:
            size = d.shape[0] * tile.shape[1]
            if size > sims.numel():  # one document longer than the budget
                sims = torch.empty(size, dtype=dtype, device=device)
            product = torch.mm(d, tile, out=sims[:size].view(d.shape[0], tile.shape[1]))
            best = _max_over_tokens(product[:used].view(stop - start, width, -1))
            n = tile.shape[1] // q_len
            out[start:stop, col : col + n] = best.view(stop - start, n, q_len).sum(dim=2, dtype=torch.float32)
            col += n
        start = stop
    return out.cpu()


# Integer types of the same width: comparing IEEE floats by their bits as integers (see _max_over_tokens).
_SAME_WIDTH_INT = {torch.bfloat16: torch.int16, torch.float32: torch.int32}


def _max_over_tokens(sims: torch.Tensor) -> torch.Tensor:
    """Max over dim 1 of ``sims`` [docs, width, query tokens] (bfloat16 or float32), exactly.

    Why not ``amax``: on bf16 its reduction over a middle dimension runs about 10x slower than the same
    reduction on int16 (measured on the benchmark's CPU), and it was half the time of exact search. Read as
    integers of the same width, floats >= +0 keep their order, and negative floats become negative integers
    in reverse order (a larger magnitude is a larger integer). So where the integer max is >= 0 it is the
    float max; where it is negative, every value is negative, and the float max (the smallest magnitude) is
    the integer min. No NaN comes out of a product of finite vectors.
    """
    bits = sims.view(_SAME_WIDTH_INT[sims.dtype])
    high = bits.amax(dim=1)
    if int(high.min()) < 0:  # rare with real embeddings: a document none of whose tokens is like a query token
        high = torch.where(high < 0, bits.amin(dim=1), high)
    return high.view(sims.dtype)


def _query_tiles(query_store: EmbeddingStore, queries: np.ndarray, dtype: torch.dtype,
                 device: torch.device) -> tuple[list[torch.Tensor], int]:
    """Tokens of ``queries`` (all of one length) packed and cut into [dim, rows] tiles of <= _TILE_ROWS rows."""
    q_len = int(query_store.lengths[queries[0]])
    rows = (query_store.offsets[queries][:, None] + np.arange(q_len)[None, :]).ravel()
    q = torch.from_numpy(np.asarray(query_store.vectors[rows], dtype=np.float32)).to(device=device, dtype=dtype)
    # Equal tiles (2432 rows -> 2 x 1216, not 2048 + 384): a thin last product runs far below peak.
    n_tiles = math.ceil(len(rows) / max(q_len, _TILE_ROWS))
    step = math.ceil(len(queries) / n_tiles) * q_len
    return [q[i : i + step].T.contiguous() for i in range(0, len(rows), step)], q_len


def _query_groups(query_store: EmbeddingStore) -> list[np.ndarray]:
    """Query numbers grouped by token count: one packed matrix per group (queries are usually all 32 long)."""
    lengths = query_store.lengths
    return [np.flatnonzero(lengths == n) for n in np.unique(lengths)]


def _doc_blocks(lengths: np.ndarray, block_tokens: int) -> list[np.ndarray]:
    """Non-empty documents in blocks of consecutive store rows (about ``block_tokens``), each sorted by length.

    Sorting within a block keeps the padding of sub-blocks small while reading the store front to back.
    """
    bounds = np.searchsorted(np.cumsum(lengths), np.arange(block_tokens, int(lengths.sum()), block_tokens), "left")
    blocks = []
    for docs in np.split(np.arange(len(lengths)), np.unique(bounds + 1)):
        docs = docs[lengths[docs] > 0]
        if len(docs):
            blocks.append(docs[np.argsort(lengths[docs], kind="stable")])
    return blocks


def _search_exact(query_store, doc_store, k, dtype, block_tokens, id_rank, device):
    lengths, offsets = doc_store.lengths, doc_store.offsets
    vectors = _store_tensor(doc_store)
    blocks = _doc_blocks(lengths, block_tokens)
    all_docs = np.arange(len(doc_store))
    run: dict[str, dict[str, float]] = {}
    for group in _query_groups(query_store):
        batch = max(1, _SCORES_BYTES // (4 * len(doc_store)))
        for qb in range(0, len(group), batch):
            queries = group[qb : qb + batch]
            q_tiles, q_len = _query_tiles(query_store, queries, dtype, device)
            scores = torch.full((len(doc_store), len(queries)), -math.inf)
            for block in blocks:
                scores[torch.from_numpy(block)] = _score_sorted(vectors, offsets, lengths, block, q_tiles, q_len, dtype)
            scores_t = scores.T.contiguous().numpy()
            for i, qi in enumerate(queries):
                docs, vals = _top_k(scores_t[i], all_docs, id_rank, k)
                run[query_store.ids[qi]] = {doc_store.ids[d]: float(v) for d, v in zip(docs, vals)}
    return {qid: run[qid] for qid in query_store.ids}  # query store order, whatever the grouping


def _search_hnsw(query_store, doc_store, index, k, ef_search, tokens_per_query_token, dtype, id_rank, device):
    lengths, offsets = doc_store.lengths, doc_store.offsets
    vectors = _store_tensor(doc_store)
    q_all = np.array(query_store.vectors, dtype=np.float32)  # a writable copy (queries are small)
    # One call for every query token: Voyager spreads it over the cores without the GIL.
    nearest = index.nearest_docs(q_all, tokens_per_query_token, ef_search)
    run: dict[str, dict[str, float]] = {}
    for qi, qid in enumerate(query_store.ids):
        lo, hi = query_store.offsets[qi], query_store.offsets[qi + 1]
        cands = np.unique(nearest[lo:hi])
        cands = cands[np.argsort(lengths[cands], kind="stable")]
        q_tile = torch.from_numpy(q_all[lo:hi]).to(device=device, dtype=dtype).T.contiguous()
        scores = _score_sorted(vectors, offsets, lengths, cands, [q_tile], int(hi - lo), dtype)[:, 0]
        docs, vals = _top_k(scores.numpy(), cands, id_rank, k)
        run[qid] = {doc_store.ids[d]: float(v) for d, v in zip(docs, vals)}
    return run
