"""Parity with PyLate 1.6: the study's model, embeddings and distillation loss are PyLate's.

Reference values in tests/fixtures/pylate/<arch>/ were computed by PyLate itself (see its README):
a tiny random base encoder, the ColBERT PyLate built from it with seed 42, the texts' token ids,
PyLate's embeddings and its `losses.Distillation` on a small KD batch.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from colbench.loss import PyLateKDScores, build_kd_loss, kd_features
from colbench.model import build_colbert, load_colbert, model_fingerprint

FIXTURES = Path(__file__).parent / "fixtures" / "pylate"
ARCHS = ["bert", "modernbert"]


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    folder = FIXTURES / request.param
    reference = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    with np.load(folder / "reference.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    pylate = load_colbert(str(folder / "pylate-colbert"), device="cpu")
    built = build_colbert(str(folder / "base"), query_length=32, document_length=180, seed=42, device="cpu")
    return {"name": request.param, "ref": reference, "npz": arrays, "pylate": pylate, "built": built}


def _assert_embeddings_match(model, arch):
    ref, npz = arch["ref"], arch["npz"]
    queries = model.encode_query(ref["queries"], convert_to_numpy=True)
    documents = model.encode_document(ref["documents"], convert_to_numpy=True)
    for i, emb in enumerate(queries):
        assert emb.shape == (ref["query_n_tokens"][i], 128)
        np.testing.assert_allclose(emb, npz[f"query_{i}"], atol=1e-5, rtol=0)
    for i, emb in enumerate(documents):
        assert emb.shape == (ref["document_n_tokens"][i], 128), f"document {i}: token count differs from PyLate"
        np.testing.assert_allclose(emb, npz[f"document_{i}"], atol=1e-5, rtol=0)


def test_pylate_checkpoint_reproduces_pylate_embeddings(arch):
    _assert_embeddings_match(arch["pylate"], arch)


def test_build_colbert_tokenizes_like_pylate(arch):
    model, ref = arch["built"], arch["ref"]
    queries = model.preprocess(ref["queries"], prompt=model.prompts["query"], task="query")
    assert queries["input_ids"].tolist() == ref["query_input_ids"]
    for text, expected in zip(ref["documents"], ref["document_input_ids"]):
        document = model.preprocess([text], prompt=model.prompts["document"], task="document")
        assert document["input_ids"][0].tolist() == expected


def test_build_colbert_from_base_equals_pylates_build(arch):
    """Same base, same seed: the projection and the new [Q]/[D] rows are drawn exactly as PyLate did."""
    _assert_embeddings_match(arch["built"], arch)
    assert model_fingerprint(arch["built"])["sha256"] == model_fingerprint(arch["pylate"])["sha256"]
    assert model_fingerprint(arch["built"])["config_sha256"] == model_fingerprint(arch["pylate"])["config_sha256"]


def _kd_inputs(model, ref):
    batch = ref["kd_batch"]
    features = kd_features(model, [b["query"] for b in batch], [b["documents"] for b in batch])
    labels = torch.tensor([b["scores"] for b in batch], dtype=torch.float32)
    return features, labels


def _kd_loss(model, ref, **kwargs):
    model.eval()
    features, labels = _kd_inputs(model, ref)
    loss = build_kd_loss(model, **kwargs)
    with torch.no_grad():
        return loss([dict(f) for f in features], labels).item()


@pytest.mark.parametrize("normalize", [True, False])
def test_kd_loss_equals_pylate_distillation(arch, normalize):
    value = _kd_loss(arch["pylate"], arch["ref"], normalize_scores=normalize, masked_positions="zero")
    assert value == pytest.approx(arch["ref"][f"distillation_loss_normalize_{str(normalize).lower()}"], abs=1e-5)


def _first_query_scores(model, ref, masked_positions):
    """Raw MaxSim scores of the KD batch, as the loss computes them."""
    captured = {}
    scorer = PyLateKDScores(normalize_scores=False, masked_positions=masked_positions)

    def spy(*args, **kwargs):
        captured["scores"] = scorer(*args, **kwargs)
        return captured["scores"]

    model.eval()
    loss = build_kd_loss(model, normalize_scores=False, masked_positions=masked_positions)
    loss.similarity_fct = spy
    features, labels = _kd_inputs(model, ref)
    with torch.no_grad():
        loss([dict(f) for f in features], labels)
    return captured["scores"]


def test_exclude_masking_differs_from_pylate_only_where_a_masked_position_wins(arch):
    ref = arch["ref"]
    zero = _first_query_scores(arch["pylate"], ref, "zero")
    exclude = _first_query_scores(arch["pylate"], ref, "exclude")
    loss_exclude = _kd_loss(arch["pylate"], ref, normalize_scores=True, masked_positions="exclude")
    if arch["name"] == "bert":
        # Every query token's best real similarity is positive here: the masked zeros never win.
        torch.testing.assert_close(zero, exclude, atol=1e-6, rtol=0)
        assert loss_exclude == pytest.approx(ref["distillation_loss_normalize_true"], abs=1e-5)
    else:
        # The first query's short document ("Short."): PyLate's zeros win the max for some tokens.
        assert zero[0, 2].item() == pytest.approx(4.631, abs=1e-3)
        assert exclude[0, 2].item() == pytest.approx(2.193, abs=1e-3)
        assert (zero >= exclude - 1e-6).all()
        assert abs(loss_exclude - ref["distillation_loss_normalize_true"]) > 1e-4
