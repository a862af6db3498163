"""Voyager token index: build, reload, reproducibility, size, and refusal of mismatched or damaged indexes."""

import json

import numpy as np
import pytest

from colbench.errors import InputError
from colbench.index import build_index, open_index
from colbench.store import open_store, write_store


def _store(path, n_docs=40, dim=16, seed=0, model="m1", ids=None):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, dim))
    lengths = rng.integers(2, 9, n_docs)
    vecs = np.concatenate([centres[i % 5] + 0.3 * rng.standard_normal((n, dim)) for i, n in enumerate(lengths)])
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = ids or [f"doc{i}" for i in range(n_docs)]
    write_store(path, ids, [(vecs, lengths)], total_tokens=len(vecs), dim=dim, meta={"model": {"sha256": model}})
    return open_store(path)


@pytest.mark.parametrize("storage", ["float32", "float8", "e4m3"])  # float8: the demo's
def test_round_trip_finds_each_token_in_its_own_document(tmp_path, storage):
    store = _store(tmp_path / "s")
    stats = build_index(store, tmp_path / "i", storage=storage, M=8, ef_construction=64)
    assert stats["n_vectors"] == store.n_tokens
    index = open_index(tmp_path / "i", store)
    assert index.token_doc.dtype == np.int32
    for doc in (0, 17, 39):
        nearest = index.nearest_docs(store.item(doc), k=1, ef=64)
        assert (nearest[:, 0] == doc).mean() >= (1.0 if storage == "float32" else 0.8)
    assert not list(tmp_path.glob(".i.tmp-*"))  # atomic: no temporary folder left


def test_lower_precision_storage_is_smaller_on_disk(tmp_path):
    store = _store(tmp_path / "s", n_docs=200, dim=128)
    f32 = build_index(store, tmp_path / "f32", storage="float32", M=8, ef_construction=32)
    for storage in ("float8", "e4m3"):
        small = build_index(store, tmp_path / storage, storage=storage, M=8, ef_construction=32)
        assert small["bytes_per_vector"] < 0.6 * f32["bytes_per_vector"], storage


def test_single_thread_build_is_reproducible(tmp_path):
    store = _store(tmp_path / "s")
    build_index(store, tmp_path / "a", seed=7)
    build_index(store, tmp_path / "b", seed=7)
    assert (tmp_path / "a" / "tokens.voy").read_bytes() == (tmp_path / "b" / "tokens.voy").read_bytes()


@pytest.mark.parametrize("other,match", [(dict(model="m2"), "another model"), (dict(dim=8), "another dimension"),
                                         (dict(seed=5), "another corpus"),
                                         (dict(ids=[f"x{i}" for i in range(40)]), "document ids")])
def test_index_for_another_store_is_refused(tmp_path, other, match):
    build_index(_store(tmp_path / "s"), tmp_path / "i")
    with pytest.raises(InputError, match=match):
        open_index(tmp_path / "i", _store(tmp_path / "s2", **other))


@pytest.mark.parametrize("damage", ["truncated", "missing_voy", "missing_map", "old_version"])
def test_damaged_index_is_refused(tmp_path, damage):
    store = _store(tmp_path / "s")
    build_index(store, tmp_path / "i")
    voy = tmp_path / "i" / "tokens.voy"
    if damage == "truncated":
        voy.write_bytes(voy.read_bytes()[:-100])
    elif damage == "missing_voy":
        voy.unlink()
    elif damage == "missing_map":
        (tmp_path / "i" / "token_doc.npy").unlink()
    else:
        manifest = json.loads((tmp_path / "i" / "manifest.json").read_text())
        manifest["format_version"] = 99
        (tmp_path / "i" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="rerun the index stage"):
        open_index(tmp_path / "i", store)

