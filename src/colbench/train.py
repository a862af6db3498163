"""Knowledge-distillation training of a ColBERT model with sentence-transformers' multi-vector trainer.

Recipe (`train`): 1. model (`colbench.model.build_colbert`) -> 2. data (`load_kd_dataset`) ->
3. loss (`colbench.loss.build_kd_loss`) -> 4. arguments (`training_arguments`) -> 5. trainer
(`MultiVectorEncoderTrainer`) -> 6. train, resuming from the last complete checkpoint of the same
configuration -> 7. save the final model atomically, with `colbench_train.json` beside the weights.

Outputs: ``output_dir``, a sentence-transformers `MultiVectorEncoder` folder plus ``colbench_train.json``
(params, seed, data manifest, config hash, provenance, final loss, parameter digests); the checkpoints a
killed run resumes from and the log, as :mod:`colbench.checkpoints` describes them.

Distributed: the same entry point runs under ``torchrun --nproc_per_node N -m colbench.train ...``
(DDP via the trainer and accelerate; gloo on CPU). Only rank 0 writes ``output_dir``, the log and
checkpoint bookkeeping.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from colbench.atomic import atomic_dir, atomic_file, read_json, write_json
from colbench.checkpoints import (
    BASELINE_RUNS,
    CheckpointBookkeeping,
    JsonLog,
    checkpoint_step,
    config_hash,
    prepare_checkpoints,
    restore_finished_run,
)
from colbench.errors import InputError, exit_with
from colbench.kd import kd_manifest, load_kd_dataset
from colbench.model import parameter_sha256
from colbench.provenance import code_digest, package_versions, provenance

TRAIN_RECORD = "colbench_train.json"
# Trainer arguments that change neither the weights nor anything else the train stage writes: a killed run may
# resume under other values (more data-loader workers, say). Every other setting is part of the checkpoints'
# configuration (`build_trainer`).
RESUME_NEUTRAL_KEYS = ("save_steps", "save_total_limit", "dataloader_num_workers")
# The libraries the train stage trains and evaluates with (see `training_code`).
TRAINING_PACKAGES = ("torch", "transformers", "sentence-transformers", "accelerate")


# ---------------------------------------------------------------------------------------- arguments
def resolve_precision(bf16: bool | str, tf32: bool | str) -> tuple[bool, bool | None]:
    """Turn the ``"auto"|true|false`` settings into what the trainer takes.

    ``auto``: bf16 where a CUDA device supports it, tf32 on Ampere or newer; plain fp32 on CPU
    (bf16 autocast on CPU is opt-in, since it is not bit-exact). Returns ``(bf16, tf32)`` with tf32
    ``None`` meaning "leave torch's default".
    """
    cuda = torch.cuda.is_available()
    # Native bf16 only: torch also counts GPUs that emulate it (V100, T4), slower there than fp32.
    use_bf16 = (cuda and torch.cuda.is_bf16_supported(including_emulation=False)) if bf16 == "auto" else bool(bf16)
    if tf32 == "auto":
        use_tf32: bool | None = True if cuda and torch.cuda.get_device_capability()[0] >= 8 else None
    elif tf32 and not cuda:
        raise InputError("train.args.tf32=true needs a CUDA GPU (Ampere or newer); use auto or false on CPU.")
    else:
        use_tf32 = bool(tf32)
    return use_bf16, use_tf32


def batch_split(per_device: int, accumulation: int, *, micro_batch: int | None = None,
                world_size: int = 1) -> tuple[int, int]:
    """``(queries per forward pass, accumulation steps)`` that keep the optimizer step at ``per_device x
    accumulation`` queries (the study's 4 x 4 = 16 on one GPU) with ``micro_batch`` queries per pass (None:
    ``per_device``) on each of ``world_size`` processes.

    The loss of a step is the mean of its micro-batches' batch-mean losses (the trainer divides each by the
    accumulation), and equal micro-batches make that the mean over the step's queries: any split of the same
    queries is the same update. A split that cannot keep the step's size is refused.
    """
    step = per_device * accumulation
    micro = micro_batch or per_device
    if step % (micro * world_size):
        raise InputError(f"train.micro_batch={micro} on {world_size} process(es) cannot make an optimizer step of "
                         f"{step} queries (train.args.per_device_train_batch_size x gradient_accumulation_steps): "
                         f"choose a micro-batch and process count whose product divides {step}")
    return micro, step // (micro * world_size)


def training_arguments(
    args: dict[str, Any],
    *,
    output_dir: str | Path,
    seed: int,
    prompts: dict[str, str] | None = None,
    micro_batch: int | None = None,
    eval_steps: int | None = None,
    with_evaluator: bool = False,
):
    """`MultiVectorEncoderTrainingArguments` from the study's ``train.args`` mapping.

    ``warmup_ratio`` becomes ``warmup_steps`` (transformers 5 takes a fraction there), bf16/tf32
    go through `resolve_precision`; every other key must be a TrainingArguments field. ``prompts``
    (`collator_prompts`) is what the trainer's collator prepends to each column. The batch is split by
    `batch_split` for ``micro_batch`` and the number of processes (torchrun's ``WORLD_SIZE``).
    """
    from sentence_transformers import MultiVectorEncoderTrainingArguments

    settings = dict(args)
    settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"] = batch_split(
        settings["per_device_train_batch_size"], settings["gradient_accumulation_steps"], micro_batch=micro_batch,
        world_size=int(os.environ.get("WORLD_SIZE", "1")))
    bf16, tf32 = resolve_precision(settings.pop("bf16", "auto"), settings.pop("tf32", "auto"))
    if "warmup_ratio" in settings:
        settings["warmup_steps"] = settings.pop("warmup_ratio")
    evaluation = {}
    if with_evaluator:
        evaluation = {
            "eval_strategy": "steps",
            "eval_steps": eval_steps or settings.get("save_steps", 500),
            "eval_on_start": True,
        }
    # Without CUDA, say so: accelerate only sets up gloo DDP across CPU processes when told to use the CPU.
    settings.setdefault("use_cpu", not torch.cuda.is_available())
    settings.setdefault("report_to", "none")
    # The stages set TQDM_DISABLE=1 to keep progress bars out of the executed notebooks; in a notebook the
    # trainer draws its own (HTML) bar, which only this argument turns off.
    settings.setdefault("disable_tqdm", os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true"))
    training_args = MultiVectorEncoderTrainingArguments(
        **settings,
        **evaluation,
        prompts=prompts or {},
        output_dir=str(output_dir),
        bf16=bf16,
        tf32=tf32,
        seed=seed,
        data_seed=seed,
        save_strategy="steps",
        logging_strategy="steps",
    )
    keep_legacy_tf32_flags_readable()
    if training_args.n_gpu > 1:
        # One process seeing several GPUs: the trainer would wrap the model in nn.DataParallel, which makes each
        # micro-batch n_gpu times larger (no longer the study's step of 16 queries), runs without bf16 autocast,
        # and cannot gather the multi-vector model's outputs (they hold ints and strings): the first step fails.
        warnings.warn(f"{training_args.n_gpu} GPUs are visible and train.distributed is none: training uses one "
                      f"({training_args.device}), as the study did. To train on all of them, set train.distributed: "
                      f"ddp and train.num_processes: {training_args.n_gpu} (the optimizer step stays the same number "
                      "of queries).", stacklevel=2)
        training_args._n_gpu = 1  # as transformers' Trainer does for a model parallel across GPUs
    return training_args


def keep_legacy_tf32_flags_readable() -> None:
    """With torch >= 2.9, transformers turns TF32 on (``tf32=True``) through torch's new ``fp32_precision`` API.
    From then on reading the legacy flags (``torch.backends.cuda.matmul.allow_tf32``,
    ``torch.get_float32_matmul_precision()``) raises, and parts of torch.compile still read them
    (pytorch/pytorch#166387). The same precision set through the legacy API keeps both readable; matmuls stay TF32."""
    if getattr(torch.backends.cuda.matmul, "fp32_precision", None) == "tf32":
        torch.set_float32_matmul_precision("high")


# ------------------------------------------------------------------------- the run's configuration
def training_code() -> dict[str, str | None]:
    """What the train stage runs: sha256 (16 hex characters) of every colbench file it reads (this module's import
    closure: training, loss, data, and the held-out evaluation's encoding, search and metrics) and the versions of
    the libraries it trains with. Part of the checkpoints' configuration: after an edit DVC reruns the train stage,
    and resuming a checkpoint written by the old code would skip its steps (a finished run "retrained" in zero
    steps, its log and held-out numbers those of the old code)."""
    return {**code_digest({"train"}), **package_versions(TRAINING_PACKAGES)}


def evaluator_identity(evaluator) -> dict[str, Any] | None:
    """What decides a held-out evaluator's numbers, for the checkpoints' configuration: its own ``fingerprint()``
    where it has one (`colbench.heldout.HeldOutRetrievalEvaluator`: settings and a digest of its data), else its
    class and plain settings (sentence-transformers' NanoBEIR evaluator: its subsets, source and batch size)."""
    if evaluator is None:
        return None
    if hasattr(evaluator, "fingerprint"):
        return evaluator.fingerprint()
    plain = {key: value for key, value in vars(evaluator).items()
             if isinstance(value, (str, int, float, bool, type(None)))
             or (isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value))}
    return {"class": f"{type(evaluator).__module__}.{type(evaluator).__qualname__}", **plain}


def _replica_digests(trainer, local: str) -> list[str]:
    # Every DDP replica should hold the same weights; gathering their digests proves it.
    tensor = torch.tensor(list(bytes.fromhex(local)), dtype=torch.uint8, device=trainer.accelerator.device)
    gathered = trainer.accelerator.gather(tensor).cpu().view(-1, 32)
    return [bytes(row.tolist()).hex() for row in gathered]


# ------------------------------------------------------------------------------------------- train
def collator_prompts(model, columns: Sequence[str]) -> dict[str, str]:
    """``args.prompts`` for the trainer's collator: each text column gets the prompt of its task.

    The collator looks prompts up by *column name* (``query``, ``document_1``..``document_N``) and
    never reads ``model.prompts``; the tasks follow the column positions (first = query, others =
    documents; the label column ``scores`` is not text). Without this, training rows carry no
    ``[Q] ``/``[D] `` prefix while encoding adds them: the study trained with them.
    """
    texts = [c for c in columns if c != "scores"]
    prompts = {column: model.prompts.get("query" if i == 0 else "document") or "" for i, column in enumerate(texts)}
    return {column: prompt for column, prompt in prompts.items() if prompt}


class LongestCandidatesFirst:
    """The trainer's collator, each query's candidate documents (and their teacher scores) put longest first.

    With ``train.document_chunk``, the loss embeds the merged document columns (column-major: every query's
    longest candidate, then every query's second longest, ...) in chunks of that many rows, each only as wide
    as its own longest document (sentence-transformers' ``mini_batch_size``). Put in this order, neighbouring
    rows have similar lengths and chunks carry little padding. The loss does not depend on the candidates'
    order (per-query min-max normalisation, then a KL divergence between distributions over the same
    candidates): only the rounding changes.
    """

    def __init__(self, collate: Callable, document_columns: Sequence[str]) -> None:
        self.collate = collate
        self.document_columns = list(document_columns)

    def ordered(self, row: dict[str, Any]) -> dict[str, Any]:
        texts = [row[column] for column in self.document_columns]
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))  # stable: ties keep the stored order
        return {**row, **{column: texts[i] for column, i in zip(self.document_columns, order)},
                "scores": [row["scores"][i] for i in order]}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        return self.collate([self.ordered(row) for row in rows])

    def __getattr__(self, name: str) -> Any:  # what the trainer reads of its collator (valid_label_columns)
        if "collate" not in self.__dict__:  # while unpickling (data-loader workers that spawn)
            raise AttributeError(name)
        return getattr(self.__dict__["collate"], name)


def check_collator_matches_encoding(trainer, dataset) -> None:
    """Collate the first rows and compare each column's token ids with `model.preprocess` under the task's
    prompt, as `encode_query`/`encode_document` tokenise: prefixes, expansion, lengths, skiplist. A mismatch
    is a bug of this module (or a library change), so it stops training before the first step."""
    model = trainer.model
    rows = [dataset[i] for i in range(min(2, dataset.num_rows))]
    batch = trainer.data_collator(rows)
    rows = [getattr(trainer.data_collator, "ordered", lambda row: row)(row) for row in rows]
    for position, column in enumerate(c for c in rows[0] if c != "scores"):
        task = "query" if position == 0 else "document"
        expected = model.preprocess([row[column] for row in rows], prompt=model.prompts.get(task), task=task)
        for key in ("input_ids", "attention_mask"):
            if not torch.equal(batch[f"{column}_{key}"], expected[key]):
                raise RuntimeError(f"the trainer's collator tokenises column {column!r} ({key}) unlike encoding with "
                                   f"task {task!r}: training would not see what the model is evaluated on")


def check_model_settings(model, wanted: dict[str, Any], checkpoint: str) -> None:
    """Refuse `train.model` settings a loaded checkpoint does not have (its weights fix them)."""
    from colbench.model import colbert_settings

    have = colbert_settings(model)
    differ = {key: have[key] for key, value in wanted.items() if key in have and have[key] != value}
    if differ:
        fixes = ", ".join(f"train.model.{key}: {value!r}" for key, value in differ.items())
        raise InputError(f"train.init_checkpoint {checkpoint!r} was built with other settings than train.model: "
                         f"set {fixes} to train it as it is.")


def build_trainer(
    *,
    kd_dir: str | Path,
    checkpoints_dir: str | Path,
    log_path: str | Path,
    base_model: str,
    model_kwargs: dict[str, Any],
    loss_kwargs: dict[str, Any],
    args: dict[str, Any],
    seed: int,
    init_checkpoint: str | None = None,
    model_revision: str | None = None,
    micro_batch: int | None = None,
    attn_implementation: str | None = None,
    document_chunk: int | None = None,
    pack_documents: bool = False,
    canary: dict[str, Any] | None = None,
    evaluator=None,
    eval_steps: int | None = None,
    max_samples: int | None = None,
    callbacks: Sequence[TrainerCallback] = (),
):
    """Steps 1-5 of the recipe: the `MultiVectorEncoderTrainer` `train` runs, and what it records.

    Returns ``(trainer, run)``; ``run`` holds the manifest, dataset, config and its hash, the checkpoint
    to resume from, the log callback and the header of the log.
    """
    from sentence_transformers import MultiVectorEncoderTrainer

    from colbench.loss import build_kd_loss
    from colbench.model import build_colbert, load_colbert, model_fingerprint
    from colbench.training_curve import LossCanary

    checkpoints_dir, log_path = Path(checkpoints_dir), Path(log_path)
    loss_settings = dict(loss_kwargs)
    n_ways = int(loss_settings.pop("n_ways"))

    # 1. Model: built from the base encoder (seeded: the projection's random init is the same on every run
    # and rank), or an existing ColBERT checkpoint to train further; a hub model at model_revision.
    if init_checkpoint:
        model = load_colbert(init_checkpoint, attn_implementation=attn_implementation, revision=model_revision,
                             what="train.init_checkpoint")
        check_model_settings(model, model_kwargs, init_checkpoint)
    else:
        model = build_colbert(base_model, **model_kwargs, seed=seed, attn_implementation=attn_implementation,
                              revision=model_revision)
    if pack_documents:
        from colbench.packing import pack_documents as pack

        pack(model)
    # 2. Data: validated before any training step.
    manifest = kd_manifest(kd_dir)
    dataset = load_kd_dataset(kd_dir, n_ways=n_ways, max_samples=max_samples)
    # 3. Loss.
    # The study's micro-batch sets how much padding each document has, which masked_positions "zero" scores.
    study_micro_batch = int(args["per_device_train_batch_size"])
    loss = build_kd_loss(model, **loss_settings, document_chunk=document_chunk, padding_group=study_micro_batch)
    if micro_batch and micro_batch % study_micro_batch and loss_settings.get("masked_positions") == "zero":
        warnings.warn(f"train.micro_batch {micro_batch} is not a multiple of the per-device batch of "
                      f"{study_micro_batch}: some documents get more or less of the padding that masked_positions "
                      "'zero' scores than in the study, so the loss differs slightly; use a multiple of it for the "
                      "same numbers.", stacklevel=2)
    # 4. Arguments, with the prompts the collator must prepend to each column.
    training_args = training_arguments(
        args, output_dir=checkpoints_dir, seed=seed, prompts=collator_prompts(model, list(dataset[0])),
        micro_batch=micro_batch, eval_steps=eval_steps, with_evaluator=evaluator is not None,
    )
    steps = planned_steps(training_args, dataset.num_rows)
    # The run would fail only after training: its curve needs a loss (logging_first_step, which bench/train_gpu.py
    # sets, logs step 1's).
    if training_args.logging_steps > steps and not training_args.logging_first_step:
        raise InputError(f"train.args.logging_steps is {training_args.logging_steps}, but this run has {steps} "
                         f"optimizer step(s) ({dataset.num_rows} training queries): no loss would be logged. Set "
                         f"train.args.logging_steps to at most {steps}.")

    config = {
        "base_model": base_model,
        "init_checkpoint": init_checkpoint,
        "initial_model": model_fingerprint(model),
        "model": model_kwargs,
        "loss": loss_kwargs,
        "args": {k: v for k, v in args.items() if k not in RESUME_NEUTRAL_KEYS},
        "attn_implementation": attn_implementation,  # numerics: the same steps, other rounding
        # bf16/tf32 "auto" as resolved on this machine: a run is not resumed in another precision.
        "precision": {"bf16": training_args.bf16, "tf32": training_args.tf32},
        "document_chunk": document_chunk,
        "pack_documents": pack_documents,
        "canary": canary,
        "heldout": {"evaluator": evaluator_identity(evaluator), "eval_steps": eval_steps},
        "seed": seed,
        "max_samples": max_samples,
        "code": training_code(),
        "world_size": training_args.world_size,
        "micro_batch": training_args.per_device_train_batch_size,  # resumed data positions depend on the split
        "data": {"manifest": manifest, "n_train": dataset.num_rows},
    }
    digest = config_hash(config)
    with training_args.main_process_first(local=False, desc="checkpoint bookkeeping"):
        resume_from = prepare_checkpoints(checkpoints_dir, digest, config, main=training_args.process_index == 0)
    # The held-out evaluation "at start" is the untrained model's: a resumed run has had it already. Its run (the
    # report's per-query baseline) is kept with the checkpoints and published from there at the end, since DVC
    # removes the stage's outputs before it reruns the stage, and a resumed run has no step 0 to write it again.
    training_args.eval_on_start = evaluator is not None and resume_from is None
    published_baseline = getattr(evaluator, "baseline_run", None)
    if published_baseline:
        evaluator = copy.copy(evaluator)  # the caller's evaluator keeps its own path
        evaluator.baseline_run = checkpoints_dir / BASELINE_RUNS / Path(published_baseline).name

    # 5. Trainer.
    header = {
        "config_hash": digest,
        "resumed_from_step": checkpoint_step(resume_from) if resume_from else None,
        "world_size": training_args.world_size,
    }
    watch = LossCanary(**canary) if canary and canary.get("reference") else None
    log = JsonLog(log_path, header, canary=watch)
    bookkeeping = CheckpointBookkeeping()
    trainer = MultiVectorEncoderTrainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        loss=loss,
        evaluator=evaluator,
        callbacks=[*([watch] if watch else []), log, bookkeeping, *callbacks],
    )
    bookkeeping.trainer = trainer
    if training_args.disable_tqdm:  # the trainer then prints every log as a dict instead: the log file has them
        trainer.remove_callback(PrinterCallback)
    if document_chunk:
        trainer.data_collator = LongestCandidatesFirst(trainer.data_collator, [c for c in dataset[0] if c != "scores"][1:])
    check_collator_matches_encoding(trainer, dataset)
    run = {"manifest": manifest, "dataset": dataset, "n_ways": n_ways, "config": config, "digest": digest,
           "resume_from": resume_from, "log": log, "header": header, "planned_steps": steps,
           "model_revision": model.colbench_revision,
           "baseline": (evaluator.baseline_run, Path(published_baseline)) if published_baseline else None}
    return trainer, run


def planned_steps(training_args, n_rows: int) -> int:
    """The optimizer steps the trainer will run on ``n_rows`` queries: transformers 5 counts the partial last
    accumulation of an epoch as a step; under DDP sentence-transformers drops the last incomplete batch
    (``dataloader_drop_last``) and accelerate then gives each process whole rounds of batches."""
    if training_args.max_steps > 0:
        return training_args.max_steps
    micro, world = training_args.per_device_train_batch_size, training_args.world_size
    if training_args.dataloader_drop_last:
        per_process = n_rows // micro // world
    else:
        per_process = math.ceil(math.ceil(n_rows / micro) / world)
    per_epoch = math.ceil(per_process / training_args.gradient_accumulation_steps)
    return math.ceil(per_epoch * training_args.num_train_epochs)


def train(*, output_dir: str | Path, provenance_extra: dict[str, Any] | None = None, **settings: Any) -> Path:
    """Distil the teacher's scores into a ColBERT and save it to ``output_dir``: steps 1-5 are `build_trainer`
    (``settings`` are its keyword arguments: the KD folder, the model, loss and trainer settings of params.yaml
    train, the seed, an initial checkpoint, ...), then 6. train, resuming from the last complete checkpoint of the
    same configuration, data and world size, and 7. save atomically with ``colbench_train.json`` beside the
    weights (``provenance_extra`` is added to it). Returns ``output_dir``.
    """
    output_dir = Path(output_dir)
    trainer, run = build_trainer(**settings)
    model, log, resume_from = trainer.model, run["log"], run["resume_from"]

    # 6. Train (resuming restores weights, optimizer, scheduler, RNG and data position).
    if resume_from and checkpoint_step(resume_from) >= run["planned_steps"]:
        # A finished run, rerun: restored, not trained. From a checkpoint at the end of a partial epoch the trainer
        # would run one step more, as it checks for the last step only after each step.
        restore_finished_run(trainer, resume_from, canary=log.canary)
    else:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if settings.get("evaluator") is not None and not any(
        "eval_runtime" in entry and entry.get("step") == trainer.state.global_step for entry in trainer.state.log_history
    ):
        trainer.evaluate()  # the end-of-training evaluation, unless the last step just had one

    # 7. Save: every rank computes its digest (collective), rank 0 writes.
    local_digest = parameter_sha256(model)
    replicas = _replica_digests(trainer, local_digest)
    if trainer.is_world_process_zero():
        log.write(trainer.state)
        if run["baseline"] and run["baseline"][0].is_file():
            kept, published = run["baseline"]
            with atomic_file(published, "wb") as out:
                out.write(kept.read_bytes())
        records, _ = log.records(trainer.state.log_history)
        losses = [r["loss"] for r in records if "loss" in r]
        manifest = run["manifest"]
        record = {
            "base_model": settings["base_model"],
            "init_checkpoint": settings.get("init_checkpoint"),
            "model_revision": run["model_revision"],  # the hub commit trained from (null: a local folder)
            "model": settings["model_kwargs"],
            "loss": settings["loss_kwargs"],
            "args": settings["args"],
            "resolved_precision": {"bf16": trainer.args.bf16, "tf32": trainer.args.tf32},
            "batch_split": {"micro_batch": trainer.args.per_device_train_batch_size,
                            "accumulation": trainer.args.gradient_accumulation_steps,
                            "document_chunk": settings.get("document_chunk"),
                            "pack_documents": settings.get("pack_documents", False)},
            "seed": settings["seed"],
            "max_samples": settings.get("max_samples"),
            "world_size": trainer.args.world_size,
            "data": {
                "kd_dir": str(settings["kd_dir"]),
                "source": manifest.get("source"),
                "revision": manifest.get("revision"),
                "manifest": manifest,
                "n_train": run["dataset"].num_rows,
                "n_ways": run["n_ways"],
            },
            "config_hash": run["digest"],
            "global_step": trainer.state.global_step,
            "resumed_from_step": run["header"]["resumed_from_step"],
            "final_loss": losses[-1] if losses else None,
            # From the log rather than the trainer's training_loss, which after a resume averages
            # only the steps run in this process.
            "mean_logged_loss": sum(losses) / len(losses) if losses else None,
            "canary": log.canary.events if log.canary else None,
            "parameter_sha256": local_digest,
            "replica_parameter_sha256": replicas,
            "provenance": provenance(Path(__file__).resolve().parent),
            "provenance_extra": provenance_extra or {},
        }
        with atomic_dir(output_dir) as tmp:
            model.save_pretrained(str(tmp))
            write_json(tmp / TRAIN_RECORD, record)
    trainer.accelerator.wait_for_everyone()
    return output_dir


# ------------------------------------------------------------------------------------ the stage
def stage_settings(params) -> dict[str, Any]:
    """`run_training`'s keyword arguments for the train stage of ``params`` (a `colbench.config.Params`): the
    pipeline's folders, its params.yaml ``train`` section and the held-out evaluation."""
    from colbench.heldout import evaluator_settings

    spec = params.train
    return dict(
        kd_dir=params.path("kd"), output_dir=params.path("model"), checkpoints_dir=params.path("checkpoints"),
        log_path=params.path("reports") / "train" / "log.json", base_model=spec.base_model,
        model_kwargs=dataclasses.asdict(spec.model), loss_kwargs=dataclasses.asdict(spec.loss),
        args=dataclasses.asdict(spec.args), seed=spec.seed, init_checkpoint=spec.init_checkpoint,
        model_revision=spec.model_revision,
        micro_batch=spec.micro_batch, attn_implementation=spec.attn_implementation, document_chunk=spec.document_chunk,
        pack_documents=spec.pack_documents, canary=dataclasses.asdict(spec.canary) if spec.canary else None,
        eval_steps=spec.eval.steps,
        evaluator_kwargs=evaluator_settings(params), distributed=spec.distributed, num_processes=spec.num_processes,
    )


def run_training(*, distributed: str = "none", num_processes: int = 1, evaluator_kwargs: dict[str, Any] | None = None,
                 **train_kwargs: Any) -> dict[str, Any]:
    """The train stage: `train` in this process, or the same entry point under torchrun (``distributed="ddp"``).

    ``evaluator_kwargs`` go to `colbench.heldout.make_evaluator` (built in every process, since an
    evaluator cannot travel to torchrun's workers). Returns `training_summary` of the saved model.
    """
    evaluator_kwargs = evaluator_kwargs or {"dataset": None}
    if distributed == "ddp":
        import subprocess
        import sys
        import tempfile

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if 0 < gpus < num_processes:  # before torchrun starts them all, each loading the data, to fail on one
            raise InputError(f"train.num_processes is {num_processes} but {gpus} GPU(s) are visible: set it to at "
                             f"most {gpus} (one process per GPU), or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
        config = {key: str(value) if isinstance(value, Path) else value for key, value in train_kwargs.items()}
        config.update(evaluator_factory="colbench.heldout:make_evaluator", evaluator_kwargs=evaluator_kwargs)
        with tempfile.TemporaryDirectory(prefix="colbench-ddp-") as tmp:
            config_path = Path(tmp) / "train.json"
            write_json(config_path, config)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={num_processes}", "-m", "colbench.train", "--config", str(config_path)]
            done = subprocess.run(command, check=False)
            if done.returncode:
                raise RuntimeError(f"torchrun's {num_processes} training processes failed (exit {done.returncode}): "
                                   "their messages are above")
    else:
        from colbench.heldout import make_evaluator

        train(**train_kwargs, evaluator=make_evaluator(**evaluator_kwargs))
    return training_summary(train_kwargs["output_dir"], train_kwargs["log_path"], evaluator_kwargs.get("dataset"))


def training_summary(output_dir: str | Path, log_path: str | Path, heldout: str | None) -> dict[str, Any]:
    """What the report needs of a finished run: steps, loss, and the held-out metric at the first and last evaluation."""
    from colbench.heldout import log_key

    record = read_json(Path(output_dir) / TRAIN_RECORD)
    records = read_json(log_path).get("records", [])
    summary: dict[str, Any] = {
        "trained": True,
        "base_model": record["base_model"],
        "global_step": record["global_step"],
        "resumed_from_step": record["resumed_from_step"],
        "n_train_queries": record["data"]["n_train"],
        # What this run of the stage trained: a resumed run did only the steps after its checkpoint, and the
        # stage's cost record counts those (a rerun after a finished training trains none).
        "queries_this_run": _queries_trained(record),
        "final_loss": record["final_loss"],
        "heldout_dataset": heldout,
    }
    for metric in ("ndcg@10", "recall@100") if heldout else ():
        evaluated = [r[log_key(heldout, metric)] for r in records if log_key(heldout, metric) in r]
        if evaluated:
            summary[f"heldout_start_{metric}"], summary[f"heldout_end_{metric}"] = evaluated[0], evaluated[-1]
    return summary


def _queries_trained(record: dict[str, Any]) -> int:
    split, resumed = record["batch_split"], record["resumed_from_step"] or 0
    per_step = split["micro_batch"] * split["accumulation"] * record["world_size"]
    return max(0, min(record["data"]["n_train"] - resumed * per_step, (record["global_step"] - resumed) * per_step))


def use_existing_checkpoint(checkpoint: str, output_dir: str | Path, *, log_path: str | Path,
                            baseline_runs: str | Path, revision: str | None = None) -> dict[str, Any]:
    """No training: check that ``checkpoint`` (hub id at ``revision``, or path) loads, and point ``output_dir`` at it.

    ``output_dir/checkpoint.json`` is what `colbench.model.load_colbert` follows, pinned to the hub commit loaded
    here (the next stages evaluate that one, even when ``revision`` is None and the hub moves on); the log is empty
    and there is no untrained baseline run (its folder exists, empty: the stage declares it).
    """
    from colbench.model import load_colbert, model_fingerprint

    output = Path(output_dir).resolve()
    if Path(checkpoint).exists() and output in (Path(checkpoint).resolve(), *Path(checkpoint).resolve().parents):
        # Writing the pointer would replace the model it points to (and then point to itself).
        raise InputError(f"train.checkpoint {checkpoint!r} is this stage's own output ({output_dir}): point it at a "
                         "copy of the model outside it, or at the folder it was trained into elsewhere.")
    model = load_colbert(checkpoint, revision=revision)  # fails here, clearly, if unreachable or not a ColBERT checkpoint
    fingerprint = model_fingerprint(model)
    with atomic_dir(output_dir) as tmp:
        write_json(tmp / "checkpoint.json", {"checkpoint": checkpoint, "revision": model.colbench_revision,
                                             "fingerprint": fingerprint,
                                             "provenance": provenance(Path(__file__).resolve().parent)})
    write_json(log_path, {"records": [], "summary": {"checkpoint": checkpoint}})
    Path(baseline_runs).mkdir(parents=True, exist_ok=True)
    return {"trained": False, "checkpoint": checkpoint, "global_step": 0, "n_train_queries": 0, "queries_this_run": 0}


def write_train_metrics(summary: dict[str, Any], path: str | Path) -> None:
    """The stage's DVC metrics: the summary's numbers (and which checkpoint was evaluated)."""
    write_json(path, {k: v for k, v in summary.items() if v is None or isinstance(v, (int, float, str, bool))})


# ---------------------------------------------------------------------------------------------- CLI
def _load_factory(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    if not name:
        raise InputError(f"--evaluator-factory {spec!r}: use module:function.")
    return getattr(importlib.import_module(module), name)


def main(argv: Sequence[str] | None = None) -> Path:
    """``python -m colbench.train --config train.json [--key value ...]`` (also under torchrun).

    ``--config`` holds `train`'s keyword arguments as JSON; flags override single keys (dict-valued
    ones take JSON). ``evaluator_factory`` (``module:function``) with ``evaluator_kwargs`` builds
    the optional evaluator in each process, since an evaluator object cannot travel as JSON.
    """
    parser = argparse.ArgumentParser(prog="python -m colbench.train", description=main.__doc__)
    parser.add_argument("--config", type=Path, help="JSON file with train()'s keyword arguments")
    for flag in ("kd-dir", "output-dir", "checkpoints-dir", "log-path", "base-model", "evaluator-factory"):
        parser.add_argument(f"--{flag}")
    for flag in ("model-kwargs", "loss-kwargs", "args", "provenance-extra", "evaluator-kwargs"):
        parser.add_argument(f"--{flag}", type=json.loads)
    for flag in ("seed", "eval-steps", "max-samples"):
        parser.add_argument(f"--{flag}", type=int)
    options = vars(parser.parse_args(argv))
    config = read_json(options.pop("config")) if options.get("config") else {}
    options.pop("config", None)
    config.update({key: value for key, value in options.items() if value is not None})
    factory = config.pop("evaluator_factory", None)
    evaluator_kwargs = config.pop("evaluator_kwargs", None) or {}
    if factory:
        config["evaluator"] = _load_factory(factory)(**evaluator_kwargs)
    required = ("kd_dir", "output_dir", "checkpoints_dir", "log_path", "base_model", "model_kwargs", "loss_kwargs", "args", "seed")
    missing = [key for key in required if key not in config]
    if missing:
        raise InputError(f"colbench.train: missing settings {missing} (in --config or as flags).")
    return train(**config)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except InputError as exc:
        exit_with(exc)
