"""Held-out retrieval evaluation during training, with the pipeline's own encode, MaxSim and metrics.

sentence-transformers ships an information-retrieval evaluator for multi-vector models, but its metrics
are its own implementation and it keeps no run. This one scores with the pipeline's code (its encoding,
exact MaxSim with masked padding, pytrec_eval metrics), in the trainer's precision (on a GPU with the study's
bf16 and tf32, the model runs under the trainer's bf16 autocast), so its NDCG@10 at step 0 and at the end of
training compare like with like (`colbench.report.training_gain`). It saves the run of its first call: the
untrained baseline that the report's per-query view compares against.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from colbench import encode, evaluate, hub, retrieve, runs
from colbench.beir_data import load_beir_folder
from colbench.store import open_store


class HeldOutRetrievalEvaluator(BaseEvaluator):
    """NDCG@10, Recall@100, MAP@100 and MRR@10 of exact MaxSim retrieval on a prepared BEIR folder."""

    def __init__(self, dataset_dir: str | Path, *, name: str, split: str = "test", ignore_identical_ids: bool,
                 baseline_run: str | Path | None = None, batch_size: int = 32, k: int = 100,
                 device: str = "cpu") -> None:
        super().__init__()
        corpus, queries, qrels_rows, _ = load_beir_folder(dataset_dir, split)
        self.doc_ids, self.doc_texts = encode.document_texts(corpus)
        self.query_ids = [str(q["_id"]) for q in queries]
        self.query_texts = [q["text"] for q in queries]
        self.qrels: dict[str, dict[str, int]] = {}
        for qid, did, score in qrels_rows:
            self.qrels.setdefault(str(qid), {})[str(did)] = int(score)
        self.name, self.ignore_identical_ids = name, ignore_identical_ids
        self.baseline_run = Path(baseline_run) if baseline_run else None
        self.batch_size, self.k, self.device = batch_size, k, device
        self.primary_metric = "ndcg@10"

    def fingerprint(self) -> dict[str, Any]:
        """What decides this evaluator's numbers and run: its settings and a digest of its texts and judgements."""
        data = json.dumps([self.doc_ids, self.doc_texts, self.query_ids, self.query_texts, self.qrels],
                          sort_keys=True, ensure_ascii=False)
        return {"name": self.name, "ignore_identical_ids": self.ignore_identical_ids, "k": self.k,
                "batch_size": self.batch_size, "device": self.device,
                "data_sha256": hashlib.sha256(data.encode("utf-8")).hexdigest()}

    def __call__(self, model, output_path: str | None = None, epoch: int = -1, steps: int = -1) -> dict[str, float]:
        with tempfile.TemporaryDirectory(prefix="colbench-heldout-") as tmp:
            stores = {}
            for part, ids, texts, is_query in (("docs", self.doc_ids, self.doc_texts, False),
                                                ("queries", self.query_ids, self.query_texts, True)):
                encode.encode_to_store(model, ids, texts, Path(tmp) / part, is_query=is_query,
                                       batch_size=self.batch_size, dtype="float32", show_progress=False)
                stores[part] = open_store(Path(tmp) / part)
            run = retrieve.search(stores["queries"], stores["docs"], k=self.k, mode="exact", dtype="float32",
                                  device=self.device)
        if steps == 0 and self.baseline_run is not None:  # the untrained model (a resumed run starts later)
            runs.write_trec(run, self.baseline_run, tag="untrained")
        metrics, _ = evaluate.evaluate_run(run, self.qrels, ignore_identical_ids=self.ignore_identical_ids)
        wanted = {m: metrics[m] for m in evaluate.PROTOCOL_METRICS}
        metrics = self.prefix_name_to_metrics(wanted, self.name)
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics


def log_key(dataset: str, metric: str) -> str:
    """The key under which the trainer logs ``metric`` of the evaluator `make_evaluator(dataset)` builds.

    NanoBEIR's evaluator names its mean over subsets ``NanoBEIR_mean`` and each metric after the model's
    score function (``maxsim`` for a `MultiVectorEncoder`); ours uses the dataset's name alone.
    """
    return f"eval_NanoBEIR_mean_maxsim_{metric}" if dataset == "nanobeir" else f"eval_{dataset}_{metric}"


def evaluator_settings(params) -> dict[str, Any]:
    """`make_evaluator`'s keyword arguments for ``params.train.eval`` (a `colbench.config.Params`): the held-out
    dataset, where the prepared sets are, its split and identical-id protocol, and where the untrained model's
    runs go (``reports/train/baseline_runs``, the report's per-query baseline)."""
    held_out = params.train.eval.dataset
    prepared = params.prepare.datasets.get(held_out) if held_out else None
    return {"dataset": held_out, "datasets_dir": str(params.path("datasets")),
            "baseline_runs": str(params.path("reports") / "train" / "baseline_runs"),
            "split": prepared.split if prepared else "test",
            "ignore_identical_ids": params.evaluate.ignore_identical_ids.get(held_out, True),
            "device": params.retrieve.device}


def make_evaluator(dataset: str | None, *, datasets_dir: str | Path | None = None, split: str = "test",
                   ignore_identical_ids: bool = True, baseline_runs: str | Path | None = None, batch_size: int = 32,
                   nanobeir_source: str = hub.NANOBEIR, nanobeir_subsets: list[str] | None = None,
                   device: str = "cpu"):
    """The evaluator ``train.eval.dataset`` names: None, NanoBEIR or a prepared dataset.

    NanoBEIR comes from ``nanobeir_source`` (the hub id, or a local copy in its layout), all subsets unless
    ``nanobeir_subsets`` names some. For a prepared dataset the untrained model's run is saved as
    ``<baseline_runs>/<dataset>.trec``; its MaxSim search runs on ``device`` (``retrieve.device``).
    """
    if dataset is None:
        return None
    if dataset == "nanobeir":
        from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorNanoBEIREvaluator

        source = nanobeir_source
        if not Path(source).is_dir() and hub.hub_out_of_reach():
            source = str(hub.cached_snapshot(source, "dataset") or source)  # `hf download`'s copy, if any
        evaluator = MultiVectorNanoBEIREvaluator(dataset_names=nanobeir_subsets, dataset_id=source, batch_size=batch_size)
        # Loaded in the constructor. The id, not where this machine found it, is what the checkpoints' configuration
        # and the model card record: a run killed online may resume offline.
        evaluator.dataset_id = nanobeir_source
        return evaluator
    baseline = Path(baseline_runs) / f"{dataset}.trec" if baseline_runs else None
    return HeldOutRetrievalEvaluator(Path(datasets_dir) / dataset, name=dataset, split=split,
                                     ignore_identical_ids=ignore_identical_ids, baseline_run=baseline,
                                     batch_size=batch_size, device=device)
