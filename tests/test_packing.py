"""train.pack_documents: ModernBERT's documents without their padding give the embeddings of the padded batch.

The training loss with packing is checked against the study software's trajectory in
tests/test_train.py::test_three_training_steps_follow_the_study_softwares_trajectory.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import numpy as np
import pytest

from colbench import packing
from colbench.errors import InputError
from colbench.model import build_colbert

FIXTURES = Path(__file__).parent / "fixtures" / "pylate"
STUDY_MODEL = dict(embedding_dim=16, query_length=32, document_length=180, query_prefix="[Q] ", document_prefix="[D] ",
                   query_expansion=True, attend_to_expansion_tokens=False, skiplist="punctuation")


def test_packed_documents_embed_as_the_padded_batch(monkeypatch):
    # One batch of documents from 3 to 150 words: the longer ones exceed ModernBERT's local window (64 tokens each
    # side), so the local layers' window is exercised too.
    model = build_colbert(str(FIXTURES / "modernbert" / "base"), **STUDY_MODEL, seed=1)
    packed = copy.deepcopy(model)
    packing.pack_documents(packed)
    attended = []
    real = packing._padded_attention
    monkeypatch.setattr(packing, "_padded_attention", lambda q, *args: attended.append(len(q)) or real(q, *args))
    rng = random.Random(0)
    words = "the of river city water energy, approximately temperature. model data 1987 symptoms".split()
    documents = [" ".join(rng.choice(words) for _ in range(n)) for n in (3, 40, 150, 90, 7, 120)]

    real_tokens = []  # what the padded batch attends: its real tokens
    model[0].register_forward_pre_hook(lambda module, args: real_tokens.append(int(args[0]["attention_mask"].sum())))
    padded_vectors = model.encode_document(documents, convert_to_numpy=True)
    packed_vectors = packed.encode_document(documents, convert_to_numpy=True)
    assert attended == real_tokens * 2  # the batch's real tokens only, in each of the two layers
    for padded, unpadded in zip(padded_vectors, packed_vectors, strict=True):
        assert padded.shape == unpadded.shape
        np.testing.assert_allclose(unpadded, padded, atol=1e-5, rtol=0)
    queries = ["what is a river", "city water"]  # queries keep their padded forward (the [MASK] expansion)
    for padded, unpadded in zip(model.encode_query(queries, convert_to_numpy=True),
                                packed.encode_query(queries, convert_to_numpy=True), strict=True):
        np.testing.assert_array_equal(unpadded, padded)


def test_packing_another_architecture_is_refused():
    model = build_colbert(str(FIXTURES / "bert" / "base"), **STUDY_MODEL, seed=1)
    with pytest.raises(InputError, match=r"train.pack_documents: packing is written for ModernBERT, not 'bert'"):
        packing.pack_documents(model)


def test_a_gpu_without_the_variable_length_kernel_is_warned_of(monkeypatch):
    # torch < 2.11 on a GPU: packing still computes the same embeddings, but pads inside the attention.
    model = build_colbert(str(FIXTURES / "modernbert" / "base"), **STUDY_MODEL, seed=1)
    monkeypatch.setattr(packing, "_varlen", lambda: None)
    monkeypatch.setattr(packing.torch.cuda, "is_available", lambda: True)
    with pytest.warns(UserWarning, match=r"no variable-length attention with a local window .* Install torch >= 2.11"):
        packing.pack_documents(model)


def test_the_variable_length_kernel_is_used_only_with_a_local_window(monkeypatch):
    # torch 2.9 and 2.10 have the kernel without ModernBERT's local window: it would fail on the GPU's first document
    # batch, so the attention pads there instead. This torch's kernel takes the window.
    import torch.nn.attention.varlen as varlen

    assert packing._varlen() is varlen.varlen_attn

    def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        raise AssertionError("not to be called")

    monkeypatch.setattr(varlen, "varlen_attn", varlen_attn_2_10)
    assert packing._varlen() is None
