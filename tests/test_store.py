"""Embedding store: round trip, memory mapping, atomicity and refusal of bad or damaged stores."""

import json

import numpy as np
import pytest

from colbench.errors import InputError
from colbench.store import open_store, write_store


def _corpus(lengths, dim=8, seed=0):
    rng = np.random.default_rng(seed)
    vecs = rng.standard_normal((sum(lengths), dim)).astype(np.float32)
    return vecs, np.asarray(lengths, dtype=np.int64)


def _chunks(vecs, lengths, per_chunk):
    """Split a corpus into (vectors, lengths) chunks of ``per_chunk`` items, as the encoder streams them."""
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for start in range(0, len(lengths), per_chunk):
        stop = min(start + per_chunk, len(lengths))
        yield vecs[offsets[start] : offsets[stop]], lengths[start:stop]


@pytest.mark.parametrize("dtype,per_chunk", [("float16", 1), ("float32", 2), ("float16", 10)])
def test_round_trip_keeps_items_in_order(tmp_path, dtype, per_chunk):
    lengths = [3, 1, 4, 1, 5]
    vecs, lens = _corpus(lengths)
    ids = ["d3", "d1", "d4", "d10", "d5"]
    write_store(tmp_path / "s", ids, _chunks(vecs, lens, per_chunk), total_tokens=vecs.shape[0], dim=8,
                dtype=dtype, meta={"model": {"sha": "abc"}, "is_query": False})
    store = open_store(tmp_path / "s")
    assert store.ids == ids and len(store) == 5 and store.dim == 8 and store.n_tokens == 14
    assert isinstance(store.vectors, np.memmap) and store.vectors.dtype == np.dtype(dtype)
    assert store.offsets.tolist() == [0, 3, 4, 8, 9, 14]
    tol = 1e-3 if dtype == "float16" else 0
    np.testing.assert_allclose(store.item(2), vecs[4:8], atol=tol * 4, rtol=tol)
    assert store.meta == {"model": {"sha": "abc"}, "is_query": False}
    assert store.fingerprint()["model"] == {"sha": "abc"}


def test_float16_store_is_half_the_float32_bytes(tmp_path):
    vecs, lens = _corpus([100] * 20, dim=128)
    for dtype in ("float16", "float32"):
        write_store(tmp_path / dtype, [str(i) for i in range(20)], [(vecs, lens)], total_tokens=2000, dim=128, dtype=dtype)
    b16, b32 = open_store(tmp_path / "float16").disk_bytes(), open_store(tmp_path / "float32").disk_bytes()
    assert b16 < 0.52 * b32 and b16 / 2000 < 2 * 128 + 20  # ~256 bytes per token vector plus small overhead


@pytest.mark.parametrize(
    "ids,lengths,total,dim,match",
    [
        ([], [], 0, 8, "empty"),
        (["a", "b", "a"], [1, 1, 1], 3, 8, "duplicate"),
        (["a", "b"], [1, 2], 4, 8, "total_tokens"),  # lengths sum to 3, not 4
        (["a", "b"], [1, 2], 3, 16, "dim mismatch"),
        (["a", "b", "c"], [1, 2], 3, 8, "3 ids but 2 lengths"),
    ],
)
def test_bad_input_is_refused_and_leaves_nothing(tmp_path, ids, lengths, total, dim, match):
    vecs, lens = _corpus(lengths or [0])
    with pytest.raises(InputError, match=match):
        write_store(tmp_path / "s", ids, [(vecs, lens)] if lengths else [], total_tokens=total, dim=dim)
    assert not (tmp_path / "s").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary folder left behind


@pytest.mark.parametrize("value", [np.nan, 1e6], ids=["nan", "overflows_float16"])
def test_a_non_finite_vector_is_refused_naming_its_item(tmp_path, value):
    # Such a document would score nothing and vanish from every ranking without a word.
    vecs, lens = _corpus([2, 3, 1])
    vecs[3, 5] = value  # the second token of "b"
    with pytest.raises(InputError, match=r"'b' has non-finite values \(NaN/inf\) in the store's float16"):
        write_store(tmp_path / "s", ["a", "b", "c"], [(vecs[:2], lens[:1]), (vecs[2:], lens[1:])], total_tokens=6,
                    dim=8, dtype="float16")
    assert list(tmp_path.iterdir()) == []


def test_failed_rewrite_keeps_the_old_store(tmp_path):
    vecs, lens = _corpus([2, 2])
    write_store(tmp_path / "s", ["a", "b"], [(vecs, lens)], total_tokens=4, dim=8)
    with pytest.raises(InputError):
        write_store(tmp_path / "s", ["a", "b"], [(vecs, lens)], total_tokens=5, dim=8)
    assert open_store(tmp_path / "s").ids == ["a", "b"]


def _good_store(tmp_path):
    vecs, lens = _corpus([3, 2, 4])
    write_store(tmp_path / "s", ["a", "b", "c"], [(vecs, lens)], total_tokens=9, dim=8, meta={"model": "m1"})
    return tmp_path / "s"


@pytest.mark.parametrize("damage", ["missing_vectors", "truncated_vectors", "old_version", "ids_edited", "missing_dir"])
def test_damaged_store_is_refused_with_advice(tmp_path, damage):
    path = _good_store(tmp_path)
    if damage == "missing_vectors":
        (path / "vectors.npy").unlink()
    elif damage == "truncated_vectors":
        data = (path / "vectors.npy").read_bytes()
        (path / "vectors.npy").write_bytes(data[: len(data) - 40])
    elif damage == "old_version":
        manifest = json.loads((path / "manifest.json").read_text())
        manifest["format_version"] = 0
        (path / "manifest.json").write_text(json.dumps(manifest))
    elif damage == "ids_edited":
        (path / "ids.json").write_text(json.dumps(["a", "b", "x"]))
    else:
        path = tmp_path / "nowhere"
    with pytest.raises(InputError, match="rerun the encode stage"):
        open_store(path)


@pytest.mark.parametrize("expect,ok", [({"model": "m1", "dim": 8}, True), ({"model": "m2"}, False), ({"dim": 128}, False)])
def test_expect_refuses_another_model_or_dimension(tmp_path, expect, ok):
    path = _good_store(tmp_path)
    if ok:
        assert open_store(path, expect=expect).dim == 8
    else:
        with pytest.raises(InputError, match="expected"):
            open_store(path, expect=expect)


def test_the_same_model_loaded_through_another_path_is_the_same_model(tmp_path):
    # A fingerprint's name says where the model was loaded from; weights, settings and dimension say what it is.
    model = {"name": "models/colbert", "embedding_dim": 8, "sha256": "ab12", "config_sha256": "cd34"}
    vecs, lens = _corpus([2])
    write_store(tmp_path / "s", ["a"], [(vecs, lens)], total_tokens=2, dim=8, meta={"model": model})
    assert open_store(tmp_path / "s", expect={"model": {**model, "name": "./models/colbert"}}).dim == 8
    with pytest.raises(InputError, match="expected"):
        open_store(tmp_path / "s", expect={"model": {**model, "sha256": "ef56"}})
