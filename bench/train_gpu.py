"""GPU training throughput of the study's configuration (ModernBERT-base ColBERT, 32-way KD).

Runs `colbench.train.train` -- the pipeline's own code path -- for a few hundred optimizer steps on a
synthetic KD set shaped like ms-marco-en-bge (short queries, passages truncated at 180 tokens,
32 candidates per query, batch 4 x accumulation 4, bf16 + tf32 where the GPU has them). The encoder
is ModernBERT-base's architecture built offline from `ModernBertConfig` with random weights: speed and
memory depend on the shapes, not on the weights. Reports samples (queries) per second after warm-up,
peak GPU memory and the projected wall time of one epoch over the study's 808,728 queries.

    python bench/train_gpu.py --out reports/bench/train_gpu.json            # one H200: < 5 minutes
    python bench/train_gpu.py --device cpu --steps 2 --model-size tiny --out /tmp/x.json   # smoke

Without CUDA (and without ``--device cpu``) it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

STUDY_QUERIES = 808_728
WORDS = (
    "the of and to in is was for on with as by at from that this which be are an or it were "
    "has have not but had they his her their its one two three first new more other after also "
    "city river government university population company music system water energy history war "
    "season film species family school health market century world state team data model "
    "process method result study cell protein patient treatment disease country region area "
    "language law court election party president member building station road line game player "
    "album song book series character power network software computer program service product"
).split()


def write_synthetic_kd(
    folder: Path,
    *,
    n_queries: int,
    n_documents: int,
    n_candidates: int,
    doc_words: tuple[int, int],
    query_words: tuple[int, int] = (4, 12),
    seed: int = 0,
) -> Path:
    """A KD folder in the prepared format, deterministic in ``seed``.

    The synthetic tables are written as a local KD source and prepared by the pipeline's own
    `colbench.kd.prepare_kd` (the same checks, schema and manifest as the prepare stage).
    """
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from colbench.kd import prepare_kd

    rng = random.Random(seed)
    raw = folder.with_name(folder.name + ".source")
    raw.mkdir(parents=True, exist_ok=True)

    def text(low: int, high: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))

    doc_ids = [f"d{i}" for i in range(n_documents)]
    pq.write_table(
        pa.table({"document_id": doc_ids, "text": [text(*doc_words) for _ in doc_ids]}), raw / "documents.parquet"
    )
    query_ids = [f"q{i}" for i in range(n_queries)]
    pq.write_table(pa.table({"query_id": query_ids, "text": [text(*query_words) for _ in query_ids]}), raw / "queries.parquet")
    candidates = [rng.sample(doc_ids, n_candidates) for _ in query_ids]
    scores = [sorted((rng.uniform(-5, 10) for _ in range(n_candidates)), reverse=True) for _ in query_ids]
    pq.write_table(pa.table({"query_id": query_ids, "document_ids": candidates, "scores": scores}), raw / "train.parquet")
    prepare_kd(str(raw), folder, revision=None, max_samples=None, seed=seed, n_ways_min=n_candidates)
    shutil.rmtree(raw)
    return folder


def write_modernbert_base(folder: Path, tokenizer_dir: Path, size: str) -> Path:
    """A randomly initialised ModernBERT encoder folder, with ModernBERT-base's sizes (or tiny ones)."""
    import torch
    from transformers import AutoTokenizer, ModernBertConfig, ModernBertModel

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sizes = (
        # answerdotai/ModernBERT-base's config.json (hidden 768, 22 layers, 12 heads, GLU 1152).
        dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152, vocab_size=50368)
        if size == "base"
        else dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96, vocab_size=len(tokenizer))
    )
    config = ModernBertConfig(
        **sizes,
        max_position_embeddings=8192,
        # The stand-in tokenizer (the fixture's WordPiece, offline) sets the special ids.
        pad_token_id=tokenizer.pad_token_id,
        cls_token_id=tokenizer.cls_token_id,
        sep_token_id=tokenizer.sep_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    ModernBertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def run(options: argparse.Namespace) -> dict:
    import torch
    from transformers import TrainerCallback

    from colbench.train import train

    cuda = options.device == "cuda"
    work = Path(tempfile.mkdtemp(prefix="colbench-train-gpu-"))
    queries_needed = options.steps * options.batch * options.accum
    kd = write_synthetic_kd(
        work / "kd",
        n_queries=queries_needed,
        n_documents=max(2000, queries_needed),
        n_candidates=options.n_ways,
        doc_words=(100, 260),  # most passages reach the 180-token cap, as the study's do at the tail
        seed=0,
    )
    base = write_modernbert_base(work / "base", Path(options.tokenizer), options.model_size)

    class Clock(TrainerCallback):
        """Step end times; stops training once the time budget is spent."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.start = time.perf_counter()
            self.attn: str | None = None

        def on_train_begin(self, args, state, control, model=None, **kwargs):
            # The attention kernel transformers picked (sdpa, flash_attention_2, eager) decides speed.
            inner = getattr(model, "module", model)
            self.attn = getattr(getattr(inner[0].auto_model, "config", None), "_attn_implementation", None)
            return control

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if self.ends[-1] - self.start > options.max_seconds:
                control.should_training_stop = True
            return control

    clock = Clock()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    train(
        kd_dir=kd,
        output_dir=work / "model",
        checkpoints_dir=work / "checkpoints",
        log_path=work / "log.json",
        base_model=str(base),
        model_kwargs=dict(embedding_dim=128, query_length=32, document_length=180),
        loss_kwargs=dict(n_ways=options.n_ways, normalize_scores=True, temperature=1.0, masked_positions="zero"),
        args=dict(
            learning_rate=8e-5,
            num_train_epochs=1,
            max_steps=options.steps,
            per_device_train_batch_size=options.batch,
            gradient_accumulation_steps=options.accum,
            warmup_ratio=0.05,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16="auto" if cuda else False,
            tf32="auto" if cuda else False,
            logging_steps=max(1, options.steps // 10),
            save_steps=10**9,  # no intermediate checkpoints: they would be timed too
            save_total_limit=1,
            dataloader_num_workers=options.workers,
            use_cpu=not cuda,
        ),
        seed=42,
        callbacks=[clock],
    )
    total = time.perf_counter() - started
    log = json.loads((work / "log.json").read_text())
    record = json.loads((work / "model" / "colbench_train.json").read_text())
    warm = min(options.warmup_steps, len(clock.ends) - 1)
    timed_steps = len(clock.ends) - 1 - warm if len(clock.ends) > 1 else 0
    seconds = clock.ends[-1] - clock.ends[warm] if timed_steps else float("nan")
    queries_per_step = options.batch * options.accum
    samples_per_s = timed_steps * queries_per_step / seconds if timed_steps else float("nan")
    result = {
        "bench": "train_gpu",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "model_size": options.model_size,
        "architecture": "ModernBERT (random init, offline config)",
        "attn_implementation": clock.attn,
        "precision": record["resolved_precision"],
        "n_ways": options.n_ways,
        "queries_per_step": queries_per_step,
        "document_length": 180,
        "steps_run": len(clock.ends),
        "steps_timed": timed_steps,
        "warmup_steps_excluded": warm + 1,
        "seconds_per_step": seconds / timed_steps if timed_steps else None,
        "samples_per_s": samples_per_s,
        "documents_per_s": samples_per_s * options.n_ways,
        "projected_hours_808728": STUDY_QUERIES / samples_per_s / 3600 if timed_steps else None,
        "gpu_memory_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "gpu_memory_reserved_peak_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "first_loss": next((r["loss"] for r in log["records"] if "loss" in r), None),
        "final_loss": record["final_loss"],
        "wall_s_total": total,
        "provenance": record["provenance"],
    }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where the JSON result goes")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps (each: batch x accum queries)")
    parser.add_argument("--warmup-steps", type=int, default=5, help="steps left out of the timing")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="stop training after this long")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--n-ways", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="dataloader worker processes")
    parser.add_argument("--model-size", choices=("base", "tiny"), default="base")
    parser.add_argument(
        "--tokenizer",
        default=str(Path(__file__).resolve().parents[1] / "tests/fixtures/pylate/modernbert/base"),
        help="a local tokenizer folder (offline stand-in for ModernBERT's)",
    )
    options = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if options.device == "cuda" and not torch.cuda.is_available():
        print(
            "train_gpu: no CUDA device visible (torch.cuda.is_available() is False, torch "
            f"{torch.__version__}). Run it on a GPU machine, or smoke-test with --device cpu --steps 2 --model-size tiny.",
            file=sys.stderr,
        )
        return 2
    result = run(options)
    options.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = options.out.with_name(options.out.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(options.out)  # atomic: a killed run leaves no half-written result
    print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
