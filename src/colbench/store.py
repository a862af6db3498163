"""Embedding store: every token vector of a collection in one contiguous, memory-mapped array.

On disk (one folder, written atomically with :func:`colbench.atomic.atomic_dir`)::

    vectors.npy    [n_tokens, dim]  float16 (default) or float32, item i's tokens in rows offsets[i]:offsets[i+1]
    offsets.npy    [n_items + 1]    int64, offsets[0] == 0, offsets[-1] == n_tokens, non-decreasing
    ids.json       [n_items]        item ids (str), unique, in row order
    manifest.json  {format_version, dtype, dim, n_items, n_tokens, ids_sha256, meta}

No pickle: numpy ``.npy`` is read with ``allow_pickle=False`` and memory-mapped, so opening a store costs
almost nothing and searching touches only the pages it reads. ``meta`` is free-form JSON from the writer
(the encode stage puts the model fingerprint, ``is_query`` and ``n_truncated`` there); readers pass
``expect`` to refuse a store made by another model or with another dimension.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from colbench.atomic import atomic_dir, read_json
from colbench.errors import InputError

FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
_FILES = ("manifest.json", "ids.json", "offsets.npy", "vectors.npy")
_RERUN = "rerun the encode stage to rebuild it (e.g. `dvc repro` on the encode stage)"


def ids_sha256(ids: list[str]) -> str:
    """A stable hash of an id list (order matters): identifies the corpus in index manifests."""
    return hashlib.sha256(json.dumps(ids, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class EmbeddingStore:
    """An opened store. ``vectors`` is a read-only memory map; everything else is small and in memory."""

    path: Path
    ids: list[str]
    vectors: np.ndarray
    offsets: np.ndarray
    dim: int
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict)
    ids_hash: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Tokens per item, int64 [n_items]."""
        return np.diff(self.offsets)

    def item(self, i: int) -> np.ndarray:
        """Token vectors of item ``i`` as a [t, dim] view of the memory map (store dtype)."""
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    def fingerprint(self) -> dict[str, Any]:
        """What an index built on this store must match: model, dimension, token count and the id list."""
        model = self.meta.get("model", self.meta.get("model_fingerprint"))
        return {"model": model, "dim": self.dim, "n_items": len(self.ids), "n_tokens": self.n_tokens,
                "ids_sha256": self.ids_hash}

    def disk_bytes(self) -> int:
        """Bytes of all store files on disk."""
        return sum((self.path / name).stat().st_size for name in _FILES)


def write_store(
    path: str | Path,
    ids: list[str],
    chunks: Iterable[tuple[np.ndarray, np.ndarray]],
    *,
    total_tokens: int,
    dim: int,
    dtype: str = "float16",
    meta: dict | None = None,
) -> None:
    """Stream ``chunks`` of (vectors [t, dim] float32, lengths [n] int64), in id order, into a store at ``path``.

    The vectors go straight into a memory-mapped ``.npy`` of ``total_tokens`` rows, so a corpus larger than
    memory can be written chunk by chunk. Raises :class:`InputError` (and leaves ``path`` untouched) for an
    empty corpus, duplicate ids, an unknown dtype, a chunk whose width is not ``dim`` or whose lengths do
    not add up to its rows, non-finite values (after the cast to ``dtype``), or lengths that do not add up to
    ``total_tokens`` / ids that do not match the number of lengths.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    if not ids:
        raise InputError(f"store {path}: the corpus is empty (no ids); check the dataset's corpus file")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dups = [i for i in ids if i in seen or seen.add(i)]  # type: ignore[func-returns-value]
        raise InputError(f"store {path}: duplicate ids {sorted(set(dups))[:5]}; ids must be unique — fix the corpus")
    if dtype not in DTYPES:
        raise InputError(f"store {path}: dtype {dtype!r} is not one of {DTYPES} (param encode.dtype)")
    if int(dim) <= 0 or int(total_tokens) < 0:
        raise InputError(f"store {path}: dim={dim} and total_tokens={total_tokens} must be positive")
    meta = dict(meta or {})
    json.dumps(meta)  # fail now, not after minutes of writing, if meta is not JSON

    with atomic_dir(path) as tmp:
        vectors = np.lib.format.open_memmap(tmp / "vectors.npy", mode="w+", dtype=dtype, shape=(int(total_tokens), int(dim)))
        all_lengths: list[np.ndarray] = []
        row = 0
        for n_chunk, (vecs, lengths) in enumerate(chunks):
            vecs = np.asarray(vecs)
            lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
            if vecs.ndim != 2 or vecs.shape[1] != dim:
                raise InputError(f"store {path}: chunk {n_chunk} has shape {vecs.shape}, expected [t, {dim}] (dim mismatch)")
            if (lengths < 0).any() or int(lengths.sum()) != vecs.shape[0]:
                raise InputError(f"store {path}: chunk {n_chunk} lengths sum to {int(lengths.sum())} "
                                 f"but it has {vecs.shape[0]} vectors")
            if row + vecs.shape[0] > total_tokens:
                raise InputError(f"store {path}: chunks hold more than total_tokens={total_tokens} vectors")
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused just below, by item
                vectors[row : row + vecs.shape[0]] = vecs  # casts to the store dtype
            # A NaN or inf scores no document, which would then silently vanish from every ranking.
            bad = np.flatnonzero(~np.isfinite(vectors[row : row + vecs.shape[0]]).all(axis=1))
            if bad.size:
                item = sum(len(done) for done in all_lengths) + int(np.searchsorted(np.cumsum(lengths), bad[0], "right"))
                raise InputError(f"store {path}: {ids[item]!r} has non-finite values (NaN/inf) in the store's {dtype}: "
                                 "the encoder produced them, or they overflow the dtype; check the model and "
                                 "encode.dtype / encode.autocast_bf16")
            row += vecs.shape[0]
            all_lengths.append(lengths)
        vectors.flush()
        del vectors  # close the map before the directory is renamed
        lengths = np.concatenate(all_lengths) if all_lengths else np.zeros(0, np.int64)
        if row != total_tokens:
            raise InputError(f"store {path}: lengths sum to {row} vectors, not total_tokens={total_tokens}")
        if len(lengths) != len(ids):
            raise InputError(f"store {path}: {len(ids)} ids but {len(lengths)} lengths in the chunks")
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        np.save(tmp / "offsets.npy", offsets, allow_pickle=False)
        (tmp / "ids.json").write_text(json.dumps(ids, ensure_ascii=False), encoding="utf-8")
        manifest = {"format_version": FORMAT_VERSION, "dtype": dtype, "dim": int(dim), "n_items": len(ids),
                    "n_tokens": int(total_tokens), "ids_sha256": ids_sha256(ids), "meta": meta}
        # The manifest is written last: a folder with a manifest is complete (the rename makes it visible).
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")


# What identifies a model in its fingerprint (`colbench.model.model_fingerprint`): weights, module settings and
# dimension. Its "name" only says where it was loaded from: the same model read through another path is the same.
MODEL_IDENTITY = ("sha256", "config_sha256", "embedding_dim")


def same_model(a: Any, b: Any) -> bool:
    """Whether two model fingerprints name the same model (compared on `MODEL_IDENTITY`)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return all(a.get(key) == b.get(key) for key in MODEL_IDENTITY)
    return a == b


def open_store(path: str | Path, expect: Mapping[str, Any] | None = None) -> EmbeddingStore:
    """Open the store at ``path`` (vectors memory-mapped, read-only).

    Refuses, with an :class:`InputError` that says to rerun the encode stage, a missing folder or file, a
    truncated or inconsistent file, or another ``format_version``. Each ``expect`` key must equal the
    manifest's ``meta`` value of that name, or the manifest value for ``dim``/``dtype``/``n_items``/
    ``n_tokens`` (e.g. ``expect={"model": model_fingerprint(model), "dim": 128}``).
    """
    path = Path(path)
    for name in _FILES:
        if not (path / name).is_file():
            raise InputError(f"store {path}: missing {name}; {_RERUN}")
    try:
        manifest = read_json(path / "manifest.json")
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(f"store {path}: format_version {version!r}, this code reads {FORMAT_VERSION}; {_RERUN}")
        dim, n_items, n_tokens = int(manifest["dim"]), int(manifest["n_items"]), int(manifest["n_tokens"])
        ids = json.loads((path / "ids.json").read_text(encoding="utf-8"))
        offsets = np.load(path / "offsets.npy", allow_pickle=False)
        # mmap raises ValueError when the file is shorter than its header says (a truncated copy).
        vectors = np.load(path / "vectors.npy", mmap_mode="r", allow_pickle=False)
    except InputError:
        raise
    except (ValueError, KeyError, TypeError, OSError, EOFError) as exc:
        raise InputError(f"store {path}: unreadable or truncated ({exc}); {_RERUN}") from exc
    problems = []
    if vectors.shape != (n_tokens, dim) or str(vectors.dtype) != manifest["dtype"]:
        problems.append(f"vectors.npy is {vectors.shape} {vectors.dtype}, manifest says ({n_tokens}, {dim}) {manifest['dtype']}")
    if offsets.shape != (n_items + 1,) or offsets[0] != 0 or offsets[-1] != n_tokens or (np.diff(offsets) < 0).any():
        problems.append("offsets.npy does not match the manifest")
    if len(ids) != n_items or ids_sha256(ids) != manifest.get("ids_sha256"):
        problems.append("ids.json does not match the manifest")
    if problems:
        raise InputError(f"store {path}: inconsistent ({'; '.join(problems)}); {_RERUN}")
    store = EmbeddingStore(path=path, ids=ids, vectors=vectors, offsets=offsets, dim=dim, dtype=manifest["dtype"],
                           meta=manifest.get("meta", {}), ids_hash=manifest["ids_sha256"])
    for key, want in (expect or {}).items():
        have = manifest[key] if key in ("dim", "dtype", "n_items", "n_tokens") else store.meta.get(key)
        if not (same_model(have, want) if key == "model" else have == want):
            raise InputError(f"store {path}: {key} is {have!r} but {want!r} was expected (made by another model or "
                             f"settings?); {_RERUN}")
    return store
