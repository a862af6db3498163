"""colbench.loss: PyLate's KD scoring (zero-masked MaxSim, min-max normalisation) on ST's KL loss.

Hand-worked cases; the comparison with PyLate's own loss values is in test_parity.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
from pathlib import Path

import pytest
import torch

from colbench.errors import InputError
from colbench.loss import EPSILON, PyLateKDScores, build_kd_loss, kd_features
from colbench.model import load_colbert

BERT_COLBERT = Path(__file__).parent / "fixtures" / "pylate" / "bert" / "pylate-colbert"

# One query with two 1-d tokens (+1 and -1), two candidate documents of three 1-d tokens.
QUERY = torch.tensor([[[1.0], [-1.0]]])
DOCS = torch.tensor([[[[0.5], [-0.5], [9.0]], [[0.2], [0.3], [-9.0]]]])
DOC_MASK = torch.tensor([[[True, True, False], [True, True, False]]])  # third position masked
QUERY_MASK = torch.ones(1, 2, dtype=torch.bool)


@pytest.mark.parametrize(
    ("masked_positions", "expected"),
    [
        # zero: doc 1 = max(.5,-.5,0) + max(-.5,.5,0) = 1.0; doc 2 = max(.2,.3,0) + max(-.2,-.3,0) = 0.3
        ("zero", [1.0, 0.3]),
        # exclude: doc 1 = .5 + .5 = 1.0; doc 2 = .3 + (-.2) = 0.1 (the masked 0 cannot win)
        ("exclude", [1.0, 0.1]),
    ],
)
def test_maxsim_masking_hand_worked(masked_positions, expected):
    scores = PyLateKDScores(normalize_scores=False, masked_positions=masked_positions)(
        QUERY, DOCS, queries_mask=QUERY_MASK, documents_mask=DOC_MASK
    )
    torch.testing.assert_close(scores, torch.tensor([expected]), atol=1e-6, rtol=0)


def test_min_max_normalisation_hand_worked():
    scores = PyLateKDScores(normalize_scores=True, masked_positions="exclude")(
        QUERY, torch.cat([DOCS, DOCS[:, :1] * 0.5], dim=1), queries_mask=QUERY_MASK,
        documents_mask=torch.cat([DOC_MASK, DOC_MASK[:, :1]], dim=1),
    )
    # raw [1.0, 0.1, 0.5] -> (s - 0.1) / (0.9 + eps)
    expected = torch.tensor([[0.9, 0.0, 0.4]]) / (0.9 + EPSILON)
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)


def test_equal_scores_normalise_to_zero_not_nan():
    docs = torch.cat([DOCS[:, :1], DOCS[:, :1]], dim=1)
    scores = PyLateKDScores(normalize_scores=True)(QUERY, docs, queries_mask=QUERY_MASK, documents_mask=DOC_MASK)
    assert torch.equal(scores, torch.zeros(1, 2))


@pytest.mark.parametrize("bad", [{"masked_positions": "ignore"}, {"temperature": 0}, {"temperature": -1.0},
                                 {"normalize_scores": "yes"}, {"teacher_temperature": 0.0}, {"teacher_temperature": True}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(InputError):
        build_kd_loss(object(), **bad)


@pytest.fixture(scope="module")
def model():
    return load_colbert(str(BERT_COLBERT), device="cpu").eval()


def test_kd_loss_is_kl_of_softmaxes_with_temperature(model):
    """The loss = T^2 * KL(softmax(teacher / T) || softmax(normalised student / T)), batch-mean."""
    queries = ["wind tunnel models", "library retrieval"]
    documents = [["wind tunnel lift", "gas mixtures", "library"], ["library indexes", "wing", "gas"]]
    teacher = torch.tensor([[0.9, 0.1, 0.3], [0.8, 0.2, 0.1]])
    features = kd_features(model, queries, documents)
    captured = {}
    for temperature in (1.0, 2.0):
        loss = build_kd_loss(model, temperature=temperature)
        scorer = loss.similarity_fct

        def spy(*args, _scorer=scorer, **kwargs):
            captured["scores"] = _scorer(*args, **kwargs)
            return captured["scores"]

        loss.similarity_fct = spy
        with torch.no_grad():
            value = loss([dict(f) for f in features], teacher).item()
        student = torch.log_softmax(captured["scores"] / temperature, dim=-1)
        target = torch.log_softmax(teacher / temperature, dim=-1)
        expected = (target.exp() * (target - student)).sum(dim=-1).mean().item() * temperature**2
        assert value == pytest.approx(expected, abs=1e-6)
        assert math.isfinite(value) and value > 0
        # Normalised student scores lie in [0, 1] with the best document at 1.
        assert captured["scores"].max(dim=1).values == pytest.approx([1.0, 1.0], abs=1e-6)


def test_kd_features_use_the_models_prompts_and_tasks(model):
    features = kd_features(model, ["q"], [["d1", "d2"]])
    assert [f["task"] for f in features] == ["query", "document", "document"]
    assert features[0]["input_ids"].shape[1] == 32  # query expansion applied
    q_id, d_id = model.tokenizer.convert_tokens_to_ids(["[Q] ", "[D] "])
    assert features[0]["input_ids"][0, 1].item() == q_id and features[1]["input_ids"][0, 1].item() == d_id
    with pytest.raises(InputError):
        kd_features(model, ["q1", "q2"], [["d1", "d2"], ["d1"]])
