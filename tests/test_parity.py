"""Parity with PyLate through the pipeline's own paths: what the encode stage stores, what the train stage's
trainer collates and the loss it computes, equal PyLate's on the same checkpoint and texts.

Reference values in tests/fixtures/pylate/<arch>/ were computed by PyLate itself (see its README): a tiny
random base encoder, the ColBERT PyLate built from it with seed 42, the texts' token ids, PyLate's embeddings
and its `losses.Distillation` on a small KD batch; `pylate114-colbert/` is saved in the format of the study's
published checkpoint (PyLate 1.1.4). The three-step training trajectory is in test_train.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from colbench.encode import encode_to_store
from colbench.model import build_colbert, load_colbert
from colbench.store import open_store

FIXTURES = Path(__file__).parent / "fixtures" / "pylate"
ARCHS = ["bert", "modernbert"]


@pytest.fixture(scope="module", params=ARCHS)
def arch(request):
    folder = FIXTURES / request.param
    reference = json.loads((folder / "reference.json").read_text(encoding="utf-8"))
    with np.load(folder / "reference.npz") as npz:
        arrays = {key: npz[key] for key in npz.files}
    pylate = load_colbert(str(folder / "pylate-colbert"), device="cpu")
    built = build_colbert(str(folder / "base"), query_length=32, document_length=180, seed=42, device="cpu")
    return {"name": request.param, "ref": reference, "npz": arrays, "pylate": pylate, "built": built}


def stored_embeddings(model, texts: list[str], tmp_path: Path, *, is_query: bool) -> dict[int, np.ndarray]:
    """Token vectors as the encode stage stores them (`encode_to_store`, float32), by position in ``texts``.

    The stage refuses an empty query (tested in test_encode.py), so the references' empty query is left out.
    """
    kind = "query" if is_query else "document"
    kept = [i for i, text in enumerate(texts) if text.strip() or not is_query]
    encode_to_store(model, [f"{kind}-{i}" for i in kept], [texts[i] for i in kept], tmp_path / kind,
                    is_query=is_query, dtype="float32", show_progress=False)
    store = open_store(tmp_path / kind)
    return {i: np.asarray(store.item(n)) for n, i in enumerate(kept)}


def assert_stores_match(model, texts: dict[str, list[str]], expected: dict, tmp_path: Path) -> None:
    for kind in ("query", "document"):
        stored = stored_embeddings(model, texts[kind], tmp_path, is_query=kind == "query")
        assert len(stored) >= len(texts[kind]) - 1
        for i, emb in stored.items():
            assert emb.shape == expected[f"{kind}_{i}"].shape, f"{kind} {i}: token count differs from PyLate"
            np.testing.assert_allclose(emb, expected[f"{kind}_{i}"], atol=1e-5, rtol=0)


def texts_of(reference: dict) -> dict[str, list[str]]:
    return {"query": reference["queries"], "document": reference["documents"]}


def test_the_encode_stage_stores_pylates_embeddings(arch, tmp_path):
    assert_stores_match(arch["pylate"], texts_of(arch["ref"]), arch["npz"], tmp_path)


def test_a_checkpoint_in_the_published_format_encodes_as_pylate_1_1_4_did(tmp_path):
    # joe32140/ColModernBERT-base-msmarco-en-bge was saved by PyLate 1.1.4 / sentence-transformers 3.3.0.
    folder = FIXTURES / "modernbert"
    reference = json.loads((folder / "pylate114.json").read_text(encoding="utf-8"))
    model = load_colbert(str(folder / "pylate114-colbert"), device="cpu")
    with np.load(folder / "pylate114.npz") as npz:  # q<i> / d<i>
        expected = {f"{'query' if key[0] == 'q' else 'document'}_{key[1:]}": npz[key] for key in npz.files}
    assert_stores_match(model, texts_of(reference), expected, tmp_path)


def test_a_model_built_from_the_base_encodes_as_pylates_build(arch, tmp_path):
    """Same base, same seed: the projection and the new [Q]/[D] rows are drawn as PyLate drew them."""
    assert_stores_match(arch["built"], texts_of(arch["ref"]), arch["npz"], tmp_path)
    ours, theirs = dict(arch["built"].named_parameters()), dict(arch["pylate"].named_parameters())
    assert ours.keys() == theirs.keys()
    for name, value in ours.items():
        # The new embedding rows come from a multivariate normal whose sampling differs by ~1e-11 between CPUs.
        torch.testing.assert_close(value, theirs[name], atol=1e-7, rtol=0, msg=name)


def test_the_trainer_collates_pylates_token_ids(arch, tmp_path, kd_folder, study_settings):
    # The train stage's trainer, built on the base (as the study does), tokenises training rows exactly as PyLate.
    from colbench.train import build_trainer

    ref = arch["ref"]
    queries = [i for i, text in enumerate(ref["queries"]) if text.strip()]  # prepare refuses an empty one
    documents = {f"d{j}": text for j, text in enumerate(ref["documents"])}
    rows = [{"query_id": f"q{i}", "document_ids": list(documents), "scores": [1.0] * len(documents)} for i in queries]
    folder = kd_folder({f"q{i}": ref["queries"][i] for i in queries}, documents, rows)
    settings = study_settings()
    settings["loss_kwargs"]["n_ways"] = len(documents)
    trainer, run = build_trainer(kd_dir=folder, checkpoints_dir=tmp_path / "ckpt", log_path=tmp_path / "log.json",
                                 base_model=str(FIXTURES / arch["name"] / "base"), seed=42, **settings)
    batch = trainer.data_collator([run["dataset"][i] for i in range(run["dataset"].num_rows)])
    assert batch["query_input_ids"].tolist() == [ref["query_input_ids"][i] for i in queries]
    for j, expected in enumerate(ref["document_input_ids"]):
        assert batch[f"document_{j + 1}_input_ids"][0].tolist() == expected  # the same document in every row


def test_a_trainer_that_would_train_without_the_prefixes_is_stopped_before_its_first_step(reference_trainer, monkeypatch):
    # The guard behind the study's [Q]/[D] fix: training must tokenise as encoding does, or nothing is trained.
    monkeypatch.setattr("colbench.train.collator_prompts", lambda model, columns: {})
    with pytest.raises(RuntimeError, match="tokenises column 'query'"):
        reference_trainer("bert")


@pytest.mark.parametrize("normalize", [True, False])
def test_the_trainers_loss_equals_pylates_distillation(arch, reference_trainer, normalize):
    trainer, run, reference = reference_trainer(arch["name"], normalize_scores=normalize)
    batch = trainer.data_collator([run["dataset"][i] for i in range(run["dataset"].num_rows)])
    q_id, d_id = trainer.model.tokenizer.convert_tokens_to_ids(["[Q] ", "[D] "])
    assert batch["query_input_ids"][:, 1].tolist() == [q_id] * len(batch["label"])  # [CLS] [Q] ...
    assert batch["document_1_input_ids"][:, 1].tolist() == [d_id] * len(batch["label"])  # [CLS] [D] ...
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    assert loss == pytest.approx(reference[f"distillation_loss_normalize_{str(normalize).lower()}"], abs=1e-6)


def scores_seen_by_the_loss(reference_trainer, arch: str, masked_positions: str) -> tuple[torch.Tensor, float]:
    """Raw MaxSim scores the trainer's loss computes on PyLate's batch, and the (normalised) loss."""
    trainer, run, _ = reference_trainer(arch, masked_positions=masked_positions)
    loss_fn = trainer.loss
    scorer, captured = loss_fn.similarity_fct, {}

    def spy(*args, **kwargs):
        normalize, scorer.normalize_scores = scorer.normalize_scores, False
        captured["raw"] = scorer(*args, **kwargs)
        scorer.normalize_scores = normalize
        return scorer(*args, **kwargs)

    loss_fn.similarity_fct = spy
    batch = trainer.data_collator([run["dataset"][i] for i in range(run["dataset"].num_rows)])
    trainer.model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
    return captured["raw"], loss


def test_exclude_masking_differs_from_pylate_only_where_a_masked_position_wins(arch, reference_trainer):
    zero, loss_zero = scores_seen_by_the_loss(reference_trainer, arch["name"], "zero")
    exclude, loss_exclude = scores_seen_by_the_loss(reference_trainer, arch["name"], "exclude")
    assert loss_zero == pytest.approx(arch["ref"]["distillation_loss_normalize_true"], abs=1e-6)
    if arch["name"] == "bert":
        # Every query token's best real similarity is positive here: the masked zeros never win.
        torch.testing.assert_close(zero, exclude, atol=1e-6, rtol=0)
        assert loss_exclude == pytest.approx(loss_zero, abs=1e-6)
    else:
        # The first query's short document ("Short."): PyLate's zeros win the max for some tokens.
        assert zero[0, 2].item() == pytest.approx(4.631, abs=1e-3)
        assert exclude[0, 2].item() == pytest.approx(2.193, abs=1e-3)
        assert (zero >= exclude - 1e-6).all()
        assert abs(loss_exclude - loss_zero) > 1e-4
