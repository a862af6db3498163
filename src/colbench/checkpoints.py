"""A training run's checkpoints and log: what a killed or repeated run resumes from.

On disk (``checkpoints_dir`` and ``log_path`` of `colbench.train.train`):
- ``checkpoints_dir/colbench_checkpoints.json``: ``{"config_hash", "config"}``; checkpoints in the
  folder belong to that configuration: everything the train stage's outputs depend on (settings but
  `colbench.train.RESUME_NEUTRAL_KEYS`, data, the held-out evaluation, the code the stage runs and the
  libraries' versions). A different hash clears the folder before training.
- ``checkpoints_dir/baseline_runs/``: the held-out evaluator's run of the untrained model (step 0),
  published to its evaluator's path at the end of every run, a resumed one included.
- ``checkpoints_dir/checkpoint-<step>/``: the Hugging Face trainer's checkpoint (model, optimizer,
  scheduler, RNG state, ``trainer_state.json``) plus ``colbench_complete.json``, written once the
  checkpoint is whole; only such checkpoints are resumed from.
- ``log_path``: JSON ``{"config_hash", "resumed_from_step", "records": [{step, epoch, loss,
  learning_rate, grad_norm, eval_*...}], "summary", "canary"}``, rewritten atomically at every log.

Only rank 0 writes; under DDP every rank reads.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerState
from transformers.trainer import TRAINER_STATE_NAME

from colbench.atomic import read_json, write_json

CHECKPOINT_CONFIG = "colbench_checkpoints.json"
CHECKPOINT_COMPLETE = "colbench_complete.json"
BASELINE_RUNS = "baseline_runs"  # in the checkpoints folder: the untrained model's runs, which a resumed run needs
LOG_KEYS = ("epoch", "loss", "learning_rate", "grad_norm")


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def checkpoint_step(path: Path) -> int:
    """The optimizer step of a ``checkpoint-<step>`` folder."""
    return int(path.name.split("-", 1)[1])


def complete_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Checkpoints written to the end (marker present), oldest first."""
    folder = Path(checkpoints_dir)
    found = [p for p in folder.glob("checkpoint-*") if p.name.split("-", 1)[1].isdigit()]
    return sorted((p for p in found if (p / CHECKPOINT_COMPLETE).is_file()), key=checkpoint_step)


def prepare_checkpoints(checkpoints_dir: str | Path, digest: str, config: dict[str, Any], *, main: bool) -> Path | None:
    """The checkpoint to resume from, or ``None`` after clearing checkpoints of another config.

    Only the main process changes the folder (call it main-first); the others only read it.
    A checkpoint without the completion marker (a run killed while saving) is removed.
    """
    folder = Path(checkpoints_dir)
    record = folder / CHECKPOINT_CONFIG
    same = record.is_file() and read_json(record).get("config_hash") == digest
    if main:
        if not same and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for partial in folder.glob("checkpoint-*"):
            if not (partial / CHECKPOINT_COMPLETE).is_file():
                shutil.rmtree(partial)
        if not same:
            write_json(record, {"config_hash": digest, "config": config})
    complete = complete_checkpoints(folder) if same else []
    return complete[-1] if complete else None


class CheckpointBookkeeping(TrainerCallback):
    """After each checkpoint: drop the trainer's pickled ``training_args.bin`` (the project keeps no
    pickle; resuming never reads it) and mark the checkpoint complete."""

    def __init__(self) -> None:
        self.trainer = None

    def on_save(self, args, state, control, **kwargs):
        if self.trainer is not None:
            # Every rank writes its RNG state into the checkpoint: mark it only once all have.
            self.trainer.accelerator.wait_for_everyone()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            (folder / "training_args.bin").unlink(missing_ok=True)
            write_json(folder / CHECKPOINT_COMPLETE, {"step": state.global_step})
        return control


class JsonLog(TrainerCallback):
    """Rewrite the training log at every log event, so that a killed run leaves a valid log.

    Built from ``state.log_history``, which a resumed run restores from its checkpoint: the log of
    a resumed run continues the steps of the interrupted one rather than restarting at 0.
    """

    def __init__(self, path: str | Path, header: dict[str, Any], canary=None) -> None:
        self.path = Path(path)
        self.header = header
        self.canary = canary  # a colbench.training_curve.LossCanary whose events go into the log

    def records(self, history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        by_step: dict[int, dict[str, Any]] = {}
        summary: dict[str, Any] = {}
        for entry in history:
            if "train_runtime" in entry:
                summary = {k: v for k, v in entry.items() if k != "step"}
                continue
            row = by_step.setdefault(int(entry["step"]), {"step": int(entry["step"])})
            row.update({k: v for k, v in entry.items() if k in LOG_KEYS or k.startswith("eval_")})
        return [by_step[step] for step in sorted(by_step)], summary

    def write(self, state) -> None:
        records, summary = self.records(state.log_history)
        canary = self.canary.events if self.canary else None
        write_json(self.path, {**self.header, "records": records, "summary": summary, "canary": canary})

    def on_log(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.write(state)
        return control


def restore_finished_run(trainer, checkpoint: Path, *, canary=None) -> None:
    """The weights and trainer state of ``checkpoint``, as `trainer.train` would leave them after its last step."""
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / TRAINER_STATE_NAME))
    # The saved flags are rank 0's; the trainer sets each process's own when it trains.
    trainer.state.is_world_process_zero = trainer.is_world_process_zero()
    trainer.state.is_local_process_zero = trainer.is_local_process_zero()
    if canary is not None:  # its verdicts, from the restored log, as at the start of a resumed run
        canary.on_train_begin(trainer.args, trainer.state, trainer.control)
