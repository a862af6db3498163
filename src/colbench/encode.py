"""Encode queries or documents into an embedding store, resumably.

`encode_to_store` encodes with the model's own query / document task (so the `[Q] `/`[D] ` prefixes,
query expansion, document truncation and the punctuation skiplist all apply, exactly as at training
time) and writes the token vectors with `colbench.store.write_store`.

Resumable: the items are cut into shards of `shard_size` in input order; each finished shard is
written atomically as npy into a work folder (`work_dir`; by default the sibling `<out_dir>.shards/`; the
encode stage keeps it out of its DVC output, which DVC deletes before it reruns a stage), whose `state.json`
lists the finished shards and the key they were made with (model fingerprint, inputs hash, task,
settings). A rerun after a kill reuses the finished shards when the key matches, and starts over
otherwise. The shard folder is removed once the store is assembled.

Within a shard, items are encoded in batches sorted by text length (longest first, ties by
position) and put back in input order: similar lengths pad less.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colbench.atomic import atomic_file, read_json, write_json
from colbench.errors import InputError
from colbench.model import model_fingerprint

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def _validate(ids: list[str], texts: list[str], is_query: bool) -> None:
    kind = "query" if is_query else "document"
    if len(ids) != len(texts):
        raise InputError(f"encode: {len(ids)} ids but {len(texts)} texts; they must pair up one to one")
    if not ids:
        raise InputError(f"encode: no {kind} to encode (empty input); check the dataset")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = sorted({i for i in ids if i in seen or seen.add(i)})  # type: ignore[func-returns-value]
        raise InputError(f"encode: duplicate {kind} ids {dups[:5]}; ids must be unique")
    for item_id, text in zip(ids, texts):
        if not isinstance(text, str):
            raise InputError(f"encode: {kind} {item_id!r} has no text ({type(text).__name__}); give it a string")
        # An empty document is legitimate (FiQA has five) and is encoded as its prefix and special tokens,
        # as PyLate does; an empty query would retrieve noise, so it is refused.
        if is_query and not text.strip():
            raise InputError(f"encode: query {item_id!r} has empty text; remove it from the dataset or give it text")
    try:
        # One pass over the joined text is much faster than a per-item check when all is well.
        "".join(texts).encode("utf-8")
    except UnicodeEncodeError:
        for item_id, text in zip(ids, texts):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(
                    f"encode: {kind} {item_id!r} holds an unpaired surrogate ({exc.reason} at {exc.start}), "
                    "i.e. bytes that were not valid UTF-8 when read; fix or re-decode the source file"
                ) from exc


def _inputs_sha256(ids: list[str], texts: list[str]) -> str:
    digest = hashlib.sha256()
    for item_id, text in zip(ids, texts):
        # Lengths prefix each field, so no choice of separator characters can make two inputs collide.
        for field in (item_id, text):
            data = field.encode("utf-8")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()


def max_tokens(model, is_query: bool) -> int | None:
    """How many tokens an input keeps: the query width (expansion length or query_length), or the
    document length; None when the model sets no limit of its own."""
    transformer = model[0]
    if is_query:
        expansion = getattr(transformer, "query_expansion", None)
        if expansion is not None and expansion.get("length"):
            return int(expansion["length"])
        length = getattr(transformer, "query_length", None)
    else:
        length = getattr(transformer, "document_length", None)
    return int(length) if length else None


def check_free_disk(model, texts: list[str], out_dir: str | Path, *, is_query: bool, dtype: str,
                    items: list[int] | None = None) -> int:
    """Refuse to start when the filesystem of ``out_dir`` cannot hold the store; returns the bytes needed.

    Upper bound per item: the model's token limit, or (no limit, or a shorter document) the text's UTF-8
    bytes plus prompt and special tokens, since a tokenizer never makes more tokens than bytes (a few
    special tokens aside); queries with expansion always take the full width. The shards and the
    assembled store are on disk together until the shards are removed, so the need is the store (every
    item) plus the shards still to write: ``items`` (default: all) are the items not yet in a shard.
    """
    limit = max_tokens(model, is_query)
    expands = is_query and getattr(model[0], "query_expansion", None)
    prompt = len((model.prompts.get("query" if is_query else "document") or "").encode("utf-8"))
    bounds = [len(text.encode("utf-8")) + prompt + 8 for text in texts]
    if limit is not None:
        bounds = [limit if expands or bound > limit else bound for bound in bounds]
    n_tokens = sum(bounds)
    n_shard_tokens = n_tokens if items is None else sum(bounds[i] for i in items)
    dim = int(model.get_embedding_dimension())
    need = (n_tokens + n_shard_tokens) * dim * np.dtype(dtype).itemsize + 64 * len(texts)  # + offsets and ids
    where = Path(out_dir).absolute()
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if need > free:
        raise InputError(
            f"encode: {out_dir} needs up to {need / 2**30:.2f} GiB ({len(texts)} items, <= {n_tokens} token "
            f"vectors of dimension {dim} in {dtype}, shards and store together) but {where} has "
            f"{free / 2**30:.2f} GiB free; free some space or move the pipeline's folder elsewhere"
        )
    return need


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)  # emulated (V100, T4): slower than fp32
    if device.type == "cpu":
        # Without AVX512-BF16 or AMX, bf16 on CPU is emulated and slower than fp32.
        checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def _count_truncated(model, texts: list[str], prompt: str | None, limit: int | None) -> int:
    if limit is None:
        return 0
    tokenizer = model.tokenizer
    prompted = [(prompt or "") + text for text in texts]
    # Tokenizing to limit + 1 is enough to tell "longer than the limit" without tokenizing long
    # texts in full; fast tokenizers make this a small fraction of the forward pass.
    lengths = tokenizer(prompted, truncation=True, max_length=limit + 1, return_length=True, verbose=False)["length"]
    return int(sum(1 for n in lengths if n > limit))


def _encode_shard(model, texts: list[str], *, task: str, batch_size: int, autocast: bool,
                  drop_expansion: bool = False) -> tuple[list[np.ndarray], int]:
    prompt = model.prompts.get(task)
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    out: list[np.ndarray | None] = [None] * len(texts)
    device = model.device
    ctx = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx, torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch_index = order[start : start + batch_size]
            batch = [texts[i] for i in batch_index]
            embeddings = model.encode(
                batch, prompt=prompt, task=task, batch_size=len(batch), show_progress_bar=False
            )
            if drop_expansion:
                # The [MASK] positions the query was padded with, as the model's own preprocessing marks them.
                expansion = model.preprocess(batch, prompt=prompt, task=task).get("query_expansion_positions")
                if expansion is not None:
                    embeddings = [emb[~positions.to(emb.device)] for emb, positions in zip(embeddings, expansion)]
            for i, emb in zip(batch_index, embeddings):
                out[i] = emb.float().cpu().numpy()
    n_truncated = _count_truncated(model, texts, prompt, max_tokens(model, task == "query"))
    return out, n_truncated  # type: ignore[return-value]


def encode_to_store(
    model,
    ids: list[str],
    texts: list[str],
    out_dir: str | Path,
    *,
    is_query: bool,
    batch_size: int = 32,
    dtype: str = "float16",
    autocast_bf16: bool = False,
    drop_query_expansion: bool = False,
    shard_size: int = 10000,
    show_progress: bool = True,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Encode `texts` (ids in the same order) with `model` into the store at `out_dir`.

    Returns stats: n_items, n_tokens, n_truncated (inputs longer than the model keeps), seconds
    (wall time of this call), items_per_s (items encoded by this call per second of encoding),
    reused_items (from a previous interrupted run), autocast_bf16 (whether bf16 was used).
    The store's meta holds `model` (model_fingerprint), `is_query`, `n_truncated`, `max_tokens`, and for queries
    `query_expansion`: ``drop`` when `drop_query_expansion` left out the vectors of the [MASK] expansion positions
    (params.yaml encode.query_expansion; what a model whose expansion vectors were zeros scores), else ``keep``.
    Raises InputError for mismatched / duplicate ids, empty texts and unpaired surrogates, and (before
    anything is written) when the output's filesystem lacks the space :func:`check_free_disk` estimates.
    """
    from colbench.store import write_store

    started = time.perf_counter()
    ids = [str(i) for i in ids]
    texts = list(texts)
    _validate(ids, texts, is_query)

    use_bf16 = bool(autocast_bf16) and _bf16_supported(model.device)
    if autocast_bf16 and not use_bf16:
        warnings.warn(f"bf16 autocast requested but not supported on {model.device}; encoding in float32", stacklevel=2)
    task = "query" if is_query else "document"
    fingerprint = model_fingerprint(model)
    dim = int(model.get_embedding_dimension())
    key = {
        "version": STATE_VERSION,
        "model": fingerprint,
        "inputs_sha256": _inputs_sha256(ids, texts),
        "n_items": len(ids),
        "task": task,
        "dtype": dtype,
        "autocast_bf16": use_bf16,
        "drop_query_expansion": bool(drop_query_expansion and is_query),
        "shard_size": shard_size,
    }

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".shards")
    state_path = work / "state.json"
    state: dict[str, Any] | None = None
    if state_path.is_file():
        with contextlib.suppress(ValueError, OSError):
            state = read_json(state_path)
        if not state or state.get("key") != key:
            logger.info("encode: %s holds shards from other inputs or another model; starting over", work)
            state = None
    n_shards = (len(ids) + shard_size - 1) // shard_size
    done = {name for name in (state or {}).get("shards", {}) if (work / f"{name}.vectors.npy").is_file()}
    todo = [i for i in range(len(ids)) if f"{i // shard_size:05d}" not in done]
    check_free_disk(model, texts, out_dir, is_query=is_query, dtype=dtype, items=todo)
    if state is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        state = {"key": key, "shards": {}}
        write_json(state_path, state)

    encoded_items, encode_seconds, reused_items = 0, 0.0, 0
    for shard in range(n_shards):
        name = f"{shard:05d}"
        lo, hi = shard * shard_size, min(len(ids), (shard + 1) * shard_size)
        if name in state["shards"] and (work / f"{name}.vectors.npy").is_file() and (work / f"{name}.lengths.npy").is_file():
            reused_items += hi - lo
            continue
        t0 = time.perf_counter()
        embeddings, n_truncated = _encode_shard(model, texts[lo:hi], task=task, batch_size=batch_size, autocast=use_bf16,
                                                drop_expansion=key["drop_query_expansion"])
        lengths = np.fromiter((len(e) for e in embeddings), dtype=np.int64, count=len(embeddings))
        vectors = np.concatenate(embeddings, axis=0).astype(dtype) if embeddings else np.zeros((0, dim), dtype)
        for suffix, array in (("vectors", vectors), ("lengths", lengths)):
            with atomic_file(work / f"{name}.{suffix}.npy", "wb") as handle:
                np.save(handle, array, allow_pickle=False)
        # The state file is the record of completion: written last, so a kill before it redoes the shard.
        state["shards"][name] = {"n_items": hi - lo, "n_tokens": int(lengths.sum()), "n_truncated": n_truncated}
        write_json(state_path, state)
        encode_seconds += time.perf_counter() - t0
        encoded_items += hi - lo
        if show_progress:
            rate = encoded_items / encode_seconds if encode_seconds else 0.0
            print(f"encode {task}: shard {shard + 1}/{n_shards} ({hi} of {len(ids)} items, {rate:.1f} items/s)", flush=True)

    names = [f"{shard:05d}" for shard in range(n_shards)]
    total_tokens = sum(state["shards"][n]["n_tokens"] for n in names)
    n_truncated = sum(state["shards"][n]["n_truncated"] for n in names)

    def chunks():
        for n in names:
            vectors = np.load(work / f"{n}.vectors.npy", mmap_mode="r", allow_pickle=False)
            lengths = np.load(work / f"{n}.lengths.npy", allow_pickle=False)
            yield np.asarray(vectors, dtype=np.float32), lengths

    limit = max_tokens(model, is_query)
    meta = {"model": fingerprint, "is_query": bool(is_query), "n_truncated": n_truncated, "max_tokens": limit}
    if is_query:
        meta["query_expansion"] = "drop" if key["drop_query_expansion"] else "keep"
    write_store(out_dir, ids, chunks(), total_tokens=total_tokens, dim=dim, dtype=dtype, meta=meta)
    shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - started
    return {
        "n_items": len(ids),
        "n_tokens": int(total_tokens),
        "n_truncated": int(n_truncated),
        "seconds": round(seconds, 3),
        "items_per_s": round(encoded_items / encode_seconds, 3) if encode_seconds > 0 else None,
        "reused_items": reused_items,
        "autocast_bf16": use_bf16,
    }


def document_texts(corpus: list[dict]) -> tuple[list[str], list[str]]:
    """(ids, texts) of BEIR corpus records, each text being ``f"{title} {text}".strip()`` as PyLate's BEIR evaluation
    builds it (spaces count: ModernBERT's tokenizer makes a leading space part of the next token)."""
    ids = [str(doc["_id"]) for doc in corpus]
    texts = [f"{doc.get('title') or ''} {doc.get('text') or ''}".strip() for doc in corpus]
    return ids, texts
