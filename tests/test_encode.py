"""colbench.encode: encoding into an embedding store, in order, resumably, refusing bad text."""


import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import colbench.encode as encode_module
from colbench.encode import encode_to_store
from colbench.errors import InputError
from colbench.model import load_colbert, model_fingerprint
from colbench.store import open_store

FIXTURE = Path(__file__).parent / "fixtures" / "pylate" / "bert"
REFERENCE = json.loads((FIXTURE / "reference.json").read_text(encoding="utf-8"))
DOCS = REFERENCE["documents"]  # includes a 300-word document (truncated at 180 tokens) and a punctuation one
DOC_IDS = [f"d{i}" for i in range(len(DOCS))]



@pytest.fixture(scope="module")
def model():
    return load_colbert(str(FIXTURE / "pylate-colbert"), device="cpu")


def test_documents_store_matches_the_models_encoding(tmp_path, model):
    stats = encode_to_store(model, DOC_IDS, DOCS, tmp_path / "docs", is_query=False, batch_size=3,
                            dtype="float32", shard_size=3, show_progress=False)
    store = open_store(tmp_path / "docs", expect={"model": model_fingerprint(model), "is_query": False})
    assert store.ids == DOC_IDS
    assert store.lengths.tolist() == REFERENCE["document_n_tokens"]  # skiplist applied, as PyLate
    expected = model.encode_document(DOCS, convert_to_numpy=True)
    for i, emb in enumerate(expected):
        np.testing.assert_allclose(store.item(i), emb, atol=1e-5, rtol=0)
    assert stats["n_items"] == len(DOCS) and stats["n_tokens"] == sum(REFERENCE["document_n_tokens"])
    assert stats["n_truncated"] == 1 and store.meta["n_truncated"] == 1  # the 300-word document
    assert store.meta["max_tokens"] == 180
    assert not (tmp_path / "docs.shards").exists()


def test_a_beir_document_is_encoded_as_its_title_then_its_text(tmp_path, model):
    # The encode stage's path: a BEIR corpus through document_texts into the store. The title comes first, one space
    # apart, the whole stripped: PyLate's BEIR evaluation, f"{title} {text}".strip() (ModernBERT's tokenizer makes a
    # leading space part of the first word's token, so the spaces at the ends matter).
    from colbench.encode import document_texts

    corpus = [{"_id": "both", "title": "Heart rate", "text": "Exercise raises it."},
              {"_id": "title", "title": "Only a title", "text": ""},
              {"_id": "text", "title": "  ", "text": "Only a text."},
              {"_id": "spaced", "title": "", "text": " Leading and trailing spaces. "},
              {"_id": "inner", "title": "Title ", "text": "text"}]
    ids, texts = document_texts(corpus)
    assert ids == ["both", "title", "text", "spaced", "inner"]
    assert texts == ["Heart rate Exercise raises it.", "Only a title", "Only a text.", "Leading and trailing spaces.",
                     "Title  text"]
    encode_to_store(model, ids, texts, tmp_path / "docs", is_query=False, dtype="float32", show_progress=False)
    store = open_store(tmp_path / "docs")
    np.testing.assert_allclose(store.item(0), model.encode_document(["Heart rate Exercise raises it."],
                                                                    convert_to_numpy=True)[0], atol=1e-5, rtol=0)


def test_queries_store_and_truncation_count(tmp_path, model):
    queries = ["wind tunnel models", " ".join(["long"] * 40)]
    stats = encode_to_store(model, ["q1", "q2"], queries, tmp_path / "q", is_query=True, show_progress=False)
    store = open_store(tmp_path / "q")
    assert store.lengths.tolist() == [32, 32]  # query expansion
    assert store.meta["is_query"] is True and stats["n_truncated"] == 1
    assert store.dtype == "float16"
    np.testing.assert_allclose(store.item(0).astype(np.float32),
                               model.encode_query(queries[:1], convert_to_numpy=True)[0], atol=2e-3, rtol=0)


def test_queries_without_their_expansion_keep_only_their_own_tokens(tmp_path, model):
    # encode.query_expansion: drop, for a model whose expansion vectors were zeros (FlashAttention 2): MaxSim over the
    # remaining vectors is the score with zeros there. A query cut at 32 tokens has no expansion to drop.
    queries = ["wind tunnel models", " ".join(["long"] * 40), "a"]
    encode_to_store(model, ["q1", "q2", "q3"], queries, tmp_path / "keep", is_query=True, dtype="float32",
                    batch_size=2, show_progress=False)
    encode_to_store(model, ["q1", "q2", "q3"], queries, tmp_path / "drop", is_query=True, dtype="float32",
                    batch_size=2, drop_query_expansion=True, show_progress=False)
    kept, dropped = open_store(tmp_path / "keep"), open_store(tmp_path / "drop")
    own = model.preprocess(queries, prompt=model.prompts["query"], task="query")["attention_mask"].sum(1).tolist()
    assert kept.lengths.tolist() == [32, 32, 32] and dropped.lengths.tolist() == own and own[1] == 32 > own[0] > own[2]
    for i in range(3):
        np.testing.assert_array_equal(dropped.item(i), kept.item(i)[: own[i]])
    assert (kept.meta["query_expansion"], dropped.meta["query_expansion"]) == ("keep", "drop")


@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_result_does_not_depend_on_batching(tmp_path, model, batch_size):
    encode_to_store(model, DOC_IDS, DOCS, tmp_path / "a", is_query=False, batch_size=batch_size, dtype="float32",
                    show_progress=False)
    encode_to_store(model, DOC_IDS, DOCS, tmp_path / "b", is_query=False, batch_size=len(DOCS), dtype="float32",
                    show_progress=False)
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    assert a.offsets.tolist() == b.offsets.tolist()
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5, rtol=0)


def killed_at_shard(number: int):
    """`encode._encode_shard` that encodes the shards before shard ``number`` (from 1), then is killed."""
    real, calls = encode_module._encode_shard, []

    def encode_shard(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    return encode_shard


def test_a_killed_run_resumes_from_finished_shards(tmp_path, model, monkeypatch):
    real = encode_module._encode_shard
    monkeypatch.setattr(encode_module, "_encode_shard", killed_at_shard(3))
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(model, DOC_IDS, DOCS, tmp_path / "docs", is_query=False, shard_size=2, show_progress=False)
    assert not (tmp_path / "docs").exists()
    state = json.loads((tmp_path / "docs.shards" / "state.json").read_text())
    assert sorted(state["shards"]) == ["00000", "00001"]

    monkeypatch.setattr(encode_module, "_encode_shard", real)
    stats = encode_to_store(model, DOC_IDS, DOCS, tmp_path / "docs", is_query=False, shard_size=2,
                            show_progress=False)
    assert stats["reused_items"] == 4
    encode_to_store(model, DOC_IDS, DOCS, tmp_path / "fresh", is_query=False, shard_size=2, show_progress=False)
    resumed, fresh = open_store(tmp_path / "docs"), open_store(tmp_path / "fresh")
    assert resumed.offsets.tolist() == fresh.offsets.tolist()
    np.testing.assert_array_equal(np.asarray(resumed.vectors), np.asarray(fresh.vectors))
    assert resumed.meta == fresh.meta
    assert not (tmp_path / "docs.shards").exists()


def test_a_killed_encode_stage_resumes_after_dvc_removed_its_output(tmp_path, model, monkeypatch):
    # The encode stage keeps its shards out of its output (data/encode_shards): DVC deletes data/embeddings before
    # it reruns the stage.
    real = encode_module._encode_shard
    out, shards = tmp_path / "embeddings" / "set" / "documents", tmp_path / "encode_shards" / "set" / "documents"
    out.parent.mkdir(parents=True)
    monkeypatch.setattr(encode_module, "_encode_shard", killed_at_shard(2))
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(model, DOC_IDS, DOCS, out, is_query=False, shard_size=2, show_progress=False, work_dir=shards)
    shutil.rmtree(tmp_path / "embeddings")  # what `dvc repro` does first
    monkeypatch.setattr(encode_module, "_encode_shard", real)
    stats = encode_to_store(model, DOC_IDS, DOCS, out, is_query=False, shard_size=2, show_progress=False,
                            work_dir=shards)
    assert stats["reused_items"] == 2 and open_store(out).ids == DOC_IDS
    assert not shards.exists()


def test_shards_from_other_inputs_are_not_reused(tmp_path, model, monkeypatch):
    real = encode_module._encode_shard
    monkeypatch.setattr(encode_module, "_encode_shard", killed_at_shard(2))
    with pytest.raises(KeyboardInterrupt):
        encode_to_store(model, DOC_IDS, DOCS, tmp_path / "docs", is_query=False, shard_size=4, show_progress=False)
    monkeypatch.setattr(encode_module, "_encode_shard", real)
    changed = list(DOCS)
    changed[0] = "A different first document."
    stats = encode_to_store(model, DOC_IDS, changed, tmp_path / "docs", is_query=False, shard_size=4,
                            show_progress=False)
    assert stats["reused_items"] == 0
    expected = model.encode_document(changed[:1], convert_to_numpy=True)[0]
    np.testing.assert_allclose(open_store(tmp_path / "docs").item(0).astype(np.float32), expected, atol=2e-3)


@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_query_is_refused_naming_it(tmp_path, model, text):
    with pytest.raises(InputError, match="query 'b' has empty text"):
        encode_to_store(model, ["a", "b"], ["fine", text], tmp_path / "out", is_query=True, show_progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("is_query", [True, False])
@pytest.mark.parametrize(
    ("ids", "texts", "message"),
    [
        (["a", "b"], ["fine", "caf\udce9"], "'b' holds an unpaired surrogate"),
        (["a", "a"], ["one", "two"], "duplicate"),
        (["a"], ["one", "two"], "1 ids but 2 texts"),
        ([], [], "empty input"),
    ],
)
def test_bad_inputs_are_refused_naming_the_item(tmp_path, model, ids, texts, message, is_query):
    with pytest.raises(InputError, match=message):
        encode_to_store(model, ids, texts, tmp_path / "out", is_query=is_query, show_progress=False)
    assert not (tmp_path / "out").exists()


def test_bad_dtype_is_refused(tmp_path, model):
    with pytest.raises(InputError, match="encode.dtype"):
        encode_to_store(model, ["a"], ["x"], tmp_path / "out", is_query=False, dtype="int8", show_progress=False)


@pytest.mark.parametrize("supported", [True, False])
def test_bf16_autocast_is_close_to_float32_or_falls_back(tmp_path, model, monkeypatch, supported):
    # Both branches on any CPU: torch emulates bf16 where the CPU lacks it (slow, same rounding).
    monkeypatch.setattr(encode_module, "_bf16_supported", lambda device: supported)
    with contextlib.nullcontext() if supported else pytest.warns(UserWarning, match="not supported"):
        stats = encode_to_store(model, DOC_IDS, DOCS, tmp_path / "bf16", is_query=False, dtype="float32",
                                autocast_bf16=True, show_progress=False)
    encode_to_store(model, DOC_IDS, DOCS, tmp_path / "fp32", is_query=False, dtype="float32", show_progress=False)
    bf16, fp32 = open_store(tmp_path / "bf16"), open_store(tmp_path / "fp32")
    assert stats["autocast_bf16"] == supported
    assert bf16.offsets.tolist() == fp32.offsets.tolist()
    if supported:  # unit vectors: bf16 keeps about 3 significant digits
        assert not np.array_equal(bf16.vectors, fp32.vectors)
        np.testing.assert_allclose(bf16.vectors, fp32.vectors, atol=5e-2, rtol=0)
    else:  # the fallback is float32 encoding itself
        np.testing.assert_array_equal(bf16.vectors, fp32.vectors)

