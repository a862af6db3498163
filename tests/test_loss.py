"""colbench.loss: PyLate's KD scoring (zero-masked MaxSim, min-max normalisation) on ST's KL loss.

Hand-worked cases; the comparison with PyLate's own loss values is in test_parity.py.
"""

import math

import pytest
import torch

from colbench.loss import EPSILON, PyLateKDScores

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



def test_kd_loss_is_kl_of_softmaxes_with_temperature(reference_trainer):
    """The trainer's loss = T^2 * KL(softmax(teacher / T_teacher) || softmax(normalised student / T)), batch-mean;
    T_teacher is T unless `train.loss.teacher_temperature` sets it (the demo's 0.5). T = 1 alone: test_parity."""
    for temperature, teacher_temperature in ((2.0, None), (1.0, 0.5)):
        trainer, run, _ = reference_trainer("bert", temperature=temperature, teacher_temperature=teacher_temperature)
        scorer, captured = trainer.loss.similarity_fct, {}

        def spy(*args, _scorer=scorer, **kwargs):
            captured["scores"] = _scorer(*args, **kwargs)
            return captured["scores"]

        trainer.loss.similarity_fct = spy
        batch = trainer.data_collator([run["dataset"][i] for i in range(run["dataset"].num_rows)])
        trainer.model.eval()
        with torch.no_grad():
            value = trainer.compute_loss(trainer.model, batch).item()
        teacher = batch["label"].float()
        student = torch.log_softmax(captured["scores"] / temperature, dim=-1)
        target = torch.log_softmax(teacher / (teacher_temperature or temperature), dim=-1)
        expected = (target.exp() * (target - student)).sum(dim=-1).mean().item() * temperature**2
        assert value == pytest.approx(expected, abs=1e-6)
        assert math.isfinite(value) and value > 0
        # Normalised student scores lie in [0, 1] with the best document at 1.
        assert captured["scores"].max(dim=1).values == pytest.approx([1.0, 1.0], abs=1e-6)
