"""Tokenisation cost per training step: how many CPU cores the trainer's collator needs to feed a GPU at the target.

The trainer tokenises every step's texts in its collator (sentence-transformers' `MultiVectorEncoderTrainer`,
with the `[Q] `/`[D] ` prompts, query expansion, document cut and, with `train.document_chunk`, each query's
candidates put longest first): 16 queries and their 32 candidates, 528 texts per optimizer step in the study's
configuration. Without data-loader workers that runs in the training process, between the GPU's steps. This
times that collator, the one `colbench.train.build_trainer` gives the trainer, on one CPU thread, over
``--steps`` optimizer steps of `bench/train_gpu.py`'s synthetic MS MARCO-like data (its module docstring says
how the passages are drawn), with the repository's offline stand-in tokenizer (the fixture's WordPiece; ModernBERT's BPE is
also a Rust `tokenizers` one and makes about as many tokens of English text). From the median time per step it
derives the workers (`train.args.dataloader_num_workers`) needed for the target of 112 queries/s: ceil(target
steps per second x seconds per step), each worker on a core of its own.

    .venv/bin/python bench/collate.py            # reports/bench/train_collate.json and .md (about a minute)
    .venv/bin/python bench/collate.py --steps 5 --out /tmp/x
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread, as in a data-loader worker
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # CPU work only: no CUDA context beside a GPU benchmark (bench/gpu.sh)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_gpu import (  # noqa: E402
    REPO,
    TARGET_QUERIES_PER_S,
    settings,
    write_modernbert_base,
    write_synthetic_kd,
)

CHUNKS = (None, 64)  # params.yaml's collator, and the one train.document_chunk wraps it in (bench/train_gpu.py's sweep)


def time_collator(chunk: int | None, *, kd: Path, base: Path, work: Path, steps: int) -> dict:
    """The trainer's own collator on ``steps`` optimizer steps' rows: seconds per step and tokens per step."""
    from colbench.train import build_trainer

    setup = settings({"document_chunk": chunk}, steps=steps, warmup=0, cuda=False, base_model=str(base))
    setup.pop("overrides")
    trainer, run = build_trainer(kd_dir=kd, checkpoints_dir=work / f"checkpoints-{chunk}",
                                 log_path=work / f"log-{chunk}.jsonl", **setup)
    args = setup["args"]
    step_queries = args["per_device_train_batch_size"] * args["gradient_accumulation_steps"]
    dataset, collate = run["dataset"], trainer.data_collator
    seconds, texts, tokens = [], 0, 0
    for step in range(steps + 1):  # the first step warms the tokenizer's caches and is left out
        rows = [dataset[i] for i in range(step * step_queries, (step + 1) * step_queries)]
        started = time.perf_counter()
        batch = collate(rows)
        elapsed = time.perf_counter() - started
        if step:
            seconds.append(elapsed)
            masks = [v for k, v in batch.items() if k.endswith("attention_mask")]
            texts += sum(len(m) for m in masks)
            tokens += sum(int(m.sum()) for m in masks)
    per_step = statistics.median(seconds)
    steps_per_s = TARGET_QUERIES_PER_S / step_queries
    return {"document_chunk": chunk, "queries_per_step": step_queries, "steps": steps,
            "seconds_per_step_median": round(per_step, 4), "seconds_per_step_max": round(max(seconds), 4),
            "texts_per_step": texts // steps, "attended_tokens_per_step": tokens // steps,
            "queries_per_s_one_core": round(step_queries / per_step, 1),
            "workers_for_target": math.ceil(steps_per_s * per_step)}


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())


def markdown(result: dict) -> str:
    lines = ["# Tokenisation per training step (the trainer's collator, one CPU thread)", "",
             f"Machine: {result['machine']}. Study configuration from params.yaml, {result['steps']} optimizer steps "
             f"of bench/train_gpu.py's synthetic MS MARCO-like data, stand-in WordPiece tokenizer. Target: "
             f"{result['target_queries_per_s']} queries/s.", "",
             "| collator | texts / step | attended tokens / step | s / step (median, max) | queries/s on one core "
             "| workers for the target |", "| --- | --- | --- | --- | --- | --- |"]
    for row in result["rows"]:
        name = f"document_chunk {row['document_chunk']} (longest first)" if row["document_chunk"] else "params.yaml"
        lines.append(f"| {name} | {row['texts_per_step']} | {row['attended_tokens_per_step']:,} | "
                     f"{row['seconds_per_step_median']:.3f}, {row['seconds_per_step_max']:.3f} | "
                     f"{row['queries_per_s_one_core']} | {row['workers_for_target']} |")
    lines += ["", result["summary"], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps timed per collator")
    parser.add_argument("--tokenizer", type=Path, default=REPO / "tests/fixtures/pylate/modernbert/base",
                        help="a local tokenizer folder (offline stand-in for ModernBERT's)")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench")
    options = parser.parse_args(argv)
    if options.steps < 1:
        parser.error("--steps must be at least 1")

    import psutil
    import torch

    from colbench.atomic import write_json, write_text

    torch.set_num_threads(1)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="colbench-collate-") as folder:
        work = Path(folder)
        # The model only has to carry the tokenizer and the study's settings: the tiny one is built in a second.
        base = write_modernbert_base(work / "modernbert-tiny", options.tokenizer, "tiny")
        step_queries = 16
        n_queries = (options.steps + 1) * step_queries
        kd = write_synthetic_kd(work / "kd", n_queries=n_queries, n_documents=n_queries * 32, n_candidates=32, seed=0)
        rows = [time_collator(chunk, kd=kd, base=base, work=work, steps=options.steps) for chunk in CHUNKS]
    study = rows[0]  # params.yaml's collator
    result = {
        "bench": "train_collate",
        "machine": f"{cpu_name()}, {psutil.cpu_count()} CPUs, torch {torch.__version__}",
        "steps": options.steps,
        "target_queries_per_s": TARGET_QUERIES_PER_S,
        "rows": rows,
        "summary": (f"One core collates {study['queries_per_s_one_core']} queries/s here, against the "
                    f"target's {TARGET_QUERIES_PER_S}: without data-loader workers (train.args.dataloader_num_workers: "
                    f"0, the study's) the training process tokenises between the GPU's steps, so training cannot pass "
                    f"that rate on this CPU whatever the GPU; {study['workers_for_target']} worker(s) on cores of "
                    "their own keep up with the target."),
        "wall_s": round(time.monotonic() - started, 1),
    }
    options.out.mkdir(parents=True, exist_ok=True)
    write_json(options.out / "train_collate.json", result)
    write_text(options.out / "train_collate.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
