"""The study's knowledge-distillation loss: PyLate's `losses.Distillation` on sentence-transformers.

sentence-transformers' `MultiVectorDistillKLDivLoss` already does the KL part exactly as PyLate
(`KLDivLoss(reduction="batchmean", log_target=True)` between the log-softmax of the teacher scores
and of the student scores, temperatures applied to both sides and the loss scaled by T^2; at T = 1
that is PyLate's loss). Two things PyLate does are not in it, so they are written here, as its
`similarity_fct`:

- min-max normalisation of each query's student MaxSim scores, `(s - min) / (max - min + 1e-8)`
  (PyLate's `normalize_scores=True`, the study's setting); ST has no such option;
- PyLate's KD scoring multiplies the similarity matrix by the document mask, so a masked position
  (padding, skiplisted punctuation) scores 0 and still takes part in the max: it wins wherever a
  query token's best real similarity is negative. ST excludes masked positions instead (the correct
  masking). `masked_positions="zero"` reproduces PyLate (what the study was trained with);
  `"exclude"` is ST's behaviour. Queries are never skiplisted; with query expansion every query
  position is scored, so the query mask is all ones and both modes treat queries alike.

The loss equals PyLate's only when the batch is tokenised with the model's prompts and tasks, which the
trainer's collator does only when given them (`colbench.train.collator_prompts`).
"""

from __future__ import annotations

import torch
from torch import Tensor

EPSILON = 1e-8  # PyLate's epsilon in the min-max denominator


class PyLateKDScores:
    """`similarity_fct` for `MultiVectorDistillKLDivLoss`: MaxSim scores `(batch, n_ways)` as PyLate computes them.

    `masked_positions="zero"`: masked document positions score exactly 0 in the max (PyLate);
    `"exclude"`: they cannot win the max. `normalize_scores`: per-query min-max normalisation.

    `padding_group`: the queries of the study's micro-batch (its per-device batch). With `"zero"`, a document's
    padding takes part in its max, and how much padding it has depends on the widest document of its micro-batch.
    A larger micro-batch (`train.micro_batch: 16`) would give the widest document of each group of 4 padding it
    never had in the study; each group of `padding_group` queries is scored within its own width instead.
    """

    def __init__(self, *, normalize_scores: bool = True, masked_positions: str = "zero",
                 padding_group: int | None = None) -> None:
        self.normalize_scores = bool(normalize_scores)
        self.masked_positions = masked_positions
        self.padding_group = padding_group
        self.__name__ = f"pylate_kd_scores_{masked_positions}{'_normalized' if normalize_scores else ''}"

    def __call__(
        self,
        queries_embeddings: Tensor,
        documents_embeddings: Tensor,
        queries_mask: Tensor | None = None,
        documents_mask: Tensor | None = None,
    ) -> Tensor:
        from sentence_transformers.multi_vector_encoder.scoring import colbert_kd_scores

        if self.masked_positions == "zero" and documents_mask is not None:
            # A zero vector has similarity exactly 0 with every query token: the same as PyLate's
            # multiplying the similarity matrix by the mask, then taking the max over all positions.
            # The mask then has to be all ones: given no mask, ST treats all-zero rows as padding.
            documents_embeddings = documents_embeddings * documents_mask.unsqueeze(-1).to(documents_embeddings.dtype)
            documents_mask = self._within_group_width(documents_mask)
        scores = colbert_kd_scores(
            queries_embeddings, documents_embeddings, queries_mask=queries_mask, documents_mask=documents_mask
        )
        if self.normalize_scores:
            low = scores.min(dim=1, keepdim=True).values
            high = scores.max(dim=1, keepdim=True).values
            scores = (scores - low) / (high - low + EPSILON)
        return scores

    def _within_group_width(self, documents_mask: Tensor) -> Tensor:
        """The positions inside the padded width of each document's group of queries (all, in a batch of one group)."""
        queries, _, width = documents_mask.shape
        if not self.padding_group or queries <= self.padding_group:
            return torch.ones_like(documents_mask, dtype=torch.bool)
        positions = torch.arange(width, device=documents_mask.device)
        # A document ends at its last scored position: [SEP] closes every document and is never skiplisted.
        lengths = torch.where(documents_mask.bool(), positions + 1, 0).amax(dim=(1, 2))  # longest per query
        group = torch.arange(queries, device=documents_mask.device) // self.padding_group
        group_width = torch.zeros(int(group[-1]) + 1, dtype=lengths.dtype, device=lengths.device)
        group_width = group_width.scatter_reduce(0, group, lengths, reduce="amax")
        return (positions < group_width[group][:, None, None]).expand_as(documents_mask)


def build_kd_loss(
    model,
    *,
    normalize_scores: bool = True,
    temperature: float = 1.0,
    masked_positions: str = "zero",
    teacher_temperature: float | None = None,
    document_chunk: int | None = None,
    padding_group: int | None = None,
):
    """The study's KD loss for `model`: a `MultiVectorDistillKLDivLoss` scoring like PyLate's `Distillation`.

    Inputs are (query, document_1, ..., document_N) columns with teacher scores `(batch, N)`.
    `temperature` is ST's (both sides, loss x T^2); 1.0 is PyLate's (no temperature).
    `teacher_temperature` overrides it on the teacher's side (None: the same): min-max normalised
    student scores always span 1, so a teacher whose scores span much less can only be matched by a
    student that gives up on ranking; dividing the teacher's scores brings the two spans together.
    `document_chunk` (ST's ``mini_batch_size``): documents per forward pass, each chunk trimmed to its own
    longest document (None: one forward of all); the same embeddings, less padding. `padding_group`: see
    `PyLateKDScores`.
    """
    from sentence_transformers.multi_vector_encoder.losses import MultiVectorDistillKLDivLoss

    scores = PyLateKDScores(normalize_scores=normalize_scores, masked_positions=masked_positions,
                            padding_group=padding_group)
    return MultiVectorDistillKLDivLoss(model, similarity_fct=scores, temperature=float(temperature),
                                       teacher_temperature=None if teacher_temperature is None else float(teacher_temperature),
                                       mini_batch_size=document_chunk)
