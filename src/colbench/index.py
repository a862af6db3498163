"""Voyager HNSW index over every document token vector of an embedding store.

On disk (one folder, written atomically)::

    tokens.voy      Voyager index; the id of a token vector is its row in the store's vectors.npy
    token_doc.npy   [n_tokens] int32, row -> document number (position in the store's ids)
    manifest.json   {format_version, store: EmbeddingStore.fingerprint(), params, n_vectors, files: {name: bytes}}

No pickle anywhere: Voyager's own format, ``.npy`` read with ``allow_pickle=False`` and JSON. Opening an
index checks the manifest against the store it will be used with (model, dimension, token count, id list)
and the recorded file sizes (a truncated copy), and refuses a mismatch with a message that says which
stage to rerun.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import voyager

from colbench.atomic import atomic_dir, read_json, write_json
from colbench.errors import InputError
from colbench.store import EmbeddingStore, same_model

FORMAT_VERSION = 1
SPACES = {"cosine": voyager.Space.Cosine, "inner_product": voyager.Space.InnerProduct,
          "euclidean": voyager.Space.Euclidean}
STORAGES = {"float32": voyager.StorageDataType.Float32, "float8": voyager.StorageDataType.Float8,
            "e4m3": voyager.StorageDataType.E4M3}
_FILES = ("tokens.voy", "token_doc.npy", "manifest.json")
_RERUN = "rerun the index stage (e.g. `dvc repro` on it) to rebuild the index for this store"
_ADD_CHUNK = 65536  # rows converted to float32 at a time while building: bounds the extra memory


@dataclass
class TokenIndex:
    """An opened index: the Voyager graph plus the token -> document map (memory-mapped)."""

    path: Path
    index: voyager.Index
    token_doc: np.ndarray
    manifest: dict[str, Any]

    def nearest_docs(self, vectors: np.ndarray, k: int, ef: int, num_threads: int = -1) -> np.ndarray:
        """Document numbers [n, k'] of the ``k' = min(k, n_vectors)`` nearest token vectors of each row of ``vectors``."""
        k = min(int(k), self.index.num_elements)
        # HNSW needs ef >= k to return k neighbours; a smaller ef silently means ef = k.
        # A writable float32 copy: Voyager's binding refuses read-only arrays such as memory maps.
        tokens, _ = self.index.query(np.array(vectors, dtype=np.float32), k=k,
                                     query_ef=max(int(ef), k), num_threads=num_threads)
        return self.token_doc[tokens.astype(np.int64)]


def build_index(store: EmbeddingStore, out_dir: str | Path, *, space: str = "cosine", M: int = 12,
                ef_construction: int = 200, storage: str = "float32", seed: int = 42,
                num_threads: int = 1) -> dict[str, Any]:
    """Index every token vector of ``store`` into ``out_dir``; return stats (build_s, bytes, bytes_per_vector, ...).

    ``num_threads=1`` (the default) makes the graph a pure function of the vectors and ``seed``: with more
    threads insertion order depends on scheduling, so the graph (and which candidates a search finds) can
    change between runs. Pass ``-1`` (all cores) to build about twice as fast on two cores when that
    reproducibility is not needed.
    """
    if store.n_tokens == 0:
        raise InputError(f"store {store.path}: no token vectors to index; rerun the encode stage")
    lengths = store.lengths
    start = time.perf_counter()
    index = voyager.Index(SPACES[space], num_dimensions=store.dim, M=int(M), ef_construction=int(ef_construction),
                          random_seed=int(seed), max_elements=store.n_tokens, storage_data_type=STORAGES[storage])
    for row in range(0, store.n_tokens, _ADD_CHUNK):
        chunk = np.array(store.vectors[row : row + _ADD_CHUNK], dtype=np.float32)  # writable copy: Voyager refuses read-only arrays
        index.add_items(chunk, ids=list(range(row, row + chunk.shape[0])), num_threads=num_threads)
    build_s = time.perf_counter() - start
    params = {"space": space, "M": int(M), "ef_construction": int(ef_construction), "storage": storage, "seed": int(seed),
              "num_threads": int(num_threads)}
    with atomic_dir(out_dir) as tmp:
        index.save(str(tmp / "tokens.voy"))
        np.save(tmp / "token_doc.npy", np.repeat(np.arange(len(lengths), dtype=np.int32), lengths), allow_pickle=False)
        files = {name: (tmp / name).stat().st_size for name in _FILES[:2]}
        write_json(tmp / "manifest.json", {"format_version": FORMAT_VERSION, "store": store.fingerprint(),
                                           "params": params, "n_vectors": store.n_tokens, "files": files})
    n_bytes = sum(files.values())
    return {"n_vectors": store.n_tokens, "build_s": round(build_s, 3), "bytes": n_bytes,
            "bytes_per_vector": round(n_bytes / store.n_tokens, 1), "params": params}


def open_index(out_dir: str | Path, store: EmbeddingStore) -> TokenIndex:
    """Load the index in ``out_dir`` for use with ``store``; refuse one built for another store or a damaged one."""
    out_dir = Path(out_dir)
    for name in _FILES:
        if not (out_dir / name).is_file():
            raise InputError(f"index {out_dir}: missing {name}; {_RERUN}")
    try:
        manifest = read_json(out_dir / "manifest.json")
    except ValueError as exc:
        raise InputError(f"index {out_dir}: unreadable manifest.json ({exc}); {_RERUN}") from exc
    if manifest.get("format_version") != FORMAT_VERSION:
        raise InputError(f"index {out_dir}: format_version {manifest.get('format_version')!r}, this code reads "
                         f"{FORMAT_VERSION}; {_RERUN}")
    built_for, this = manifest.get("store", {}), store.fingerprint()
    for key, what in (("model", "model"), ("dim", "dimension"), ("n_tokens", "corpus (token count)"),
                      ("ids_sha256", "corpus (document ids)")):
        if not (same_model(built_for.get(key), this[key]) if key == "model" else built_for.get(key) == this[key]):
            raise InputError(f"index {out_dir}: built for another {what} ({built_for.get(key)!r}, the store at "
                             f"{store.path} has {this[key]!r}); {_RERUN}")
    for name, size in manifest.get("files", {}).items():
        if (out_dir / name).stat().st_size != size:
            raise InputError(f"index {out_dir}: {name} is {(out_dir / name).stat().st_size} bytes, the manifest "
                             f"says {size} (truncated or replaced); {_RERUN}")
    try:
        index = voyager.Index.load(str(out_dir / "tokens.voy"))
        token_doc = np.load(out_dir / "token_doc.npy", mmap_mode="r", allow_pickle=False)
    except (RuntimeError, ValueError, OSError) as exc:
        raise InputError(f"index {out_dir}: cannot load ({exc}); {_RERUN}") from exc
    if index.num_elements != store.n_tokens or index.num_dimensions != store.dim or token_doc.shape != (store.n_tokens,):
        raise InputError(f"index {out_dir}: holds {index.num_elements} vectors of dimension {index.num_dimensions}, "
                         f"the store {store.n_tokens} of {store.dim}; {_RERUN}")
    return TokenIndex(path=out_dir, index=index, token_doc=token_doc, manifest=manifest)
