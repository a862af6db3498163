"""The prepare stage from a warm cache, and the train stage's loading of the distillation set, at the study's full
size, timed on this machine (no GPU work in either).

bench/study_gpu.py times the stages that run on the GPU machine's accelerator; these two run on its CPU and its
disk, and the study's total counts them too (study_gpu.py reads this file's JSON, committed in reports/bench, and
says which machine measured it).

Each phase runs in a child process of its own, timed from outside, with the peak resident memory of the largest
single process among the child and its waited-for descendants (`os.wait4`; for a notebook, its kernel; data-loader
workers' own memory is not added):

1. ``prepare, first run after hf download``: the prepare stage as `dvc repro` runs it (papermill executes
   notebooks/01_prepare.ipynb with params.yaml, in a pipeline folder under ``--work``; its preflight would refuse
   the base model and NanoBEIR, which are not cached here and which the stage does not read: the copy of params.yaml
   names a local model and no held-out set), offline
   (HF_HUB_OFFLINE=1), on a synthetic copy of lightonai/ms-marco-en-bge at params.yaml's revision in a Hugging Face
   hub cache of its own (the layout `hf download` fills, the hub's three parquet files and card) and on BEIR
   folders with the four test sets' sizes in a BEIR cache of its own (COLBENCH_BEIR_CACHE). The first run
   includes the datasets library's one-time conversion of the hub's parquet files into its Arrow cache.
2. ``prepare from a warm cache``: the same command again (the prepared folders are rewritten): the study's
   target counts this one.
3. ``train stage, 3 steps of a tiny ModernBERT``: the train stage as `dvc repro` runs it (papermill,
   notebooks/02_train.ipynb) on that prepared set, with params.yaml's settings (32-way, 4 x 4, 4 data-loader
   workers) but for the model (the tests' tiny random ModernBERT), 3 steps and no held-out set: what the stage
   costs beside its steps at this size (start-up, loading the set, the trainer, saving).
4. ``train: distillation set loaded``: `colbench.kd.load_kd_dataset` on the prepared folder, as the train stage
   calls it (read, `check_kd`, `resolve_ids`), then ``--batches`` batches of 16 rows read through its transform,
   as the data loader reads each optimizer step's texts.

Synthetic data at the hub set's sizes (its card): 8,841,823 documents, 808,731 queries, 808,728 training rows
of 32 candidate ids (the study's `train.loss.n_ways`; drawn uniformly from the documents) with float32 scores
sorted from best; ids are decimal strings, as MS MARCO's. Texts are bench/train_gpu.py's English-like words:
each document joins two of 200,000 pooled half-passages (word counts lognormal, mean 30, sigma 0.6), about 60
words and 415 characters: 3.7 GB of text, a little more than the real collection's (about 3 GB); each query joins two pooled halves of mean
3 words. The BEIR folders have the test sets' documents and test queries (mean lengths: bench/study_gpu.py's
DATASETS), one relevant document per query.

    python bench/prepare_cpu.py                     # about 10 minutes on two cores, 8 GB of disk in --work
    python bench/prepare_cpu.py --scale 0.001 --out-dir /tmp/x   # smoke: the same phases on 0.1 % of the sizes
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collate import cpu_name  # noqa: E402
from study_gpu import DATASETS  # noqa: E402
from train_gpu import REPO, synthetic_text, words_lognormal  # noqa: E402

HUB_ID = "lightonai/ms-marco-en-bge"
SIZES = {"documents": 8_841_823, "queries": 808_731, "train": 808_728}  # the hub set's card
CANDIDATES = 32
POOL = 200_000
TRAIN_STEPS = 3
CHUNK = 1_000_000  # documents per generated chunk: one string array stays far below 2 GiB
# The hub snapshot's card: the configs and files `datasets.load_dataset(<snapshot folder>, config)` reads.
CARD = """---
configs:
  - config_name: queries
    data_files:
      - split: train
        path: english_queries.train.parquet
  - config_name: documents
    data_files:
      - split: train
        path: english_collection.parquet
  - config_name: train
    data_files:
      - split: train
        path: dataset.parquet
---
"""


def pooled_halves(rng: random.Random, n: int, mean_words: float, sigma: float, high: int):
    import pyarrow as pa

    return pa.array([synthetic_text(rng, words_lognormal(rng, mean_words, sigma, 1, high)) for _ in range(n)])


def joined(first, second, gen: np.random.Generator, n: int):
    """``n`` texts, each a random element of ``first`` and one of ``second`` joined by a space."""
    import pyarrow.compute as pc

    return pc.binary_join_element_wise(first.take(gen.integers(0, len(first), n)),
                                       second.take(gen.integers(0, len(second), n)), " ")


def decimal_ids(values: np.ndarray):
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.cast(pa.array(values, type=pa.int64()), pa.string())


def write_hub_snapshot(folder: Path, sizes: dict[str, int], seed: int = 0) -> None:
    """lightonai/ms-marco-en-bge's three parquet files and card, synthetic, at ``sizes``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng, gen = random.Random(seed), np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text(CARD)
    pool = min(POOL, sizes["documents"])
    first, second = (pooled_halves(rng, pool, 30, 0.6, 150) for _ in range(2))
    schema = pa.schema([("document_id", pa.string()), ("text", pa.string())])
    with pq.ParquetWriter(folder / "english_collection.parquet", schema) as writer:
        for start in range(0, sizes["documents"], CHUNK):
            n = min(CHUNK, sizes["documents"] - start)
            writer.write_table(pa.table({"document_id": decimal_ids(np.arange(start, start + n)),
                                         "text": joined(first, second, gen, n)}, schema=schema))
    q_first, q_second = (pooled_halves(rng, min(POOL, sizes["queries"]), 3, 0.5, 10) for _ in range(2))
    pq.write_table(pa.table({"query_id": decimal_ids(np.arange(sizes["queries"])),
                             "text": joined(q_first, q_second, gen, sizes["queries"])}),
                   folder / "english_queries.train.parquet")
    n = sizes["train"]
    offsets = pa.array(np.arange(0, n * CANDIDATES + 1, CANDIDATES, dtype=np.int32))
    ids = decimal_ids(gen.integers(0, sizes["documents"], n * CANDIDATES))
    scores = -np.sort(-gen.normal(0.0, 1.0, (n, CANDIDATES)).astype(np.float32), axis=1)
    pq.write_table(pa.table({
        "query_id": decimal_ids(np.arange(n)),
        "document_ids": pa.ListArray.from_arrays(offsets, ids),
        "scores": pa.ListArray.from_arrays(offsets, pa.array(scores.ravel())),
    }), folder / "dataset.parquet")


def write_beir_folders(cache: Path, scale: float, seed: int = 0) -> None:
    """Each test set of params.yaml as a BEIR folder in the BEIR cache, with its sizes x ``scale``."""
    rng = random.Random(seed)
    for name, (n_docs, n_queries, doc_words, query_words) in DATASETS.items():
        folder = cache / name
        (folder / "qrels").mkdir(parents=True, exist_ok=True)
        n_docs, n_queries = max(10, round(n_docs * scale)), max(2, round(n_queries * scale))
        with (folder / "corpus.jsonl").open("w") as out:
            for i in range(n_docs):
                text = synthetic_text(rng, words_lognormal(rng, doc_words, 0.6, 3, 1000))
                out.write(json.dumps({"_id": f"d{i}", "title": "", "text": text}) + "\n")
        with (folder / "queries.jsonl").open("w") as out:
            for i in range(n_queries):
                out.write(json.dumps({"_id": f"q{i}", "text": synthetic_text(rng, words_lognormal(rng, query_words, 0.4, 1, 400))}) + "\n")
        qrels = "".join(f"q{i}\td{rng.randrange(n_docs)}\t1\n" for i in range(n_queries))
        (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)


def child(command: list[str], env: dict[str, str], cwd: Path) -> dict:
    """Run ``command``: its wall time and the peak RSS of the largest process among it and its waited-for
    descendants (Linux's ``ru_maxrss`` of `os.wait4`, in KiB)."""
    start = time.monotonic()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.monotonic() - start
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        log = out.read().decode(errors="replace")
    if process.returncode != 0:
        raise SystemExit(f"prepare_cpu: {' '.join(command)} failed:\n{log[-4000:]}")
    return {"wall_s": round(wall, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def load_phase(kd_dir: Path, batches: int, out: Path) -> None:
    """The child of phase 4: writes its timings to ``out`` (JSON)."""
    import datasets  # noqa: F401 - imported before the clock starts: the train stage imports them anyway
    import sentence_transformers.util  # noqa: F401

    from colbench.kd import load_kd_dataset

    start = time.monotonic()
    dataset = load_kd_dataset(kd_dir, n_ways=CANDIDATES)
    loaded = time.monotonic()
    order = np.random.default_rng(0).permutation(len(dataset))  # the sampler's shuffled order: random rows
    n = min(batches, len(dataset) // 16)
    for b in range(n):
        rows = dataset[[int(i) for i in order[b * 16: (b + 1) * 16]]]
        assert len(rows["document_32"]) == 16
    out.write_text(json.dumps({"load_s": round(loaded - start, 1), "batches": n,
                               "s_per_batch": round((time.monotonic() - loaded) / max(n, 1), 4)}))


def markdown(result: dict) -> str:
    sizes = result["sizes"]
    lines = [
        "# The prepare stage from a warm cache, and the train stage beside its steps, at the study's size",
        "",
        f"Machine: {result['machine']}, {result['cpus']} CPUs; measured {result['date']} at commit {result['commit']}. "
        f"Synthetic lightonai/ms-marco-en-bge at {result['scale']:g} x its size ({sizes['documents']:,} documents, "
        f"{sizes['queries']:,} queries, {sizes['train']:,} training rows x {CANDIDATES} candidates; "
        f"{result['documents_text_gb']:.2f} GB of document text) and the four BEIR test sets at {result['scale']:g} x "
        "theirs (see bench/prepare_cpu.py).",
        "",
        "| phase | wall time | peak memory (largest process) | what runs |",
        "| --- | --- | --- | --- |",
    ]
    for p in result["phases"]:
        lines.append(f"| {p['phase']} | {p['wall_s'] / 60:.1f} min | {p['peak_rss_mb'] / 1024:.1f} GiB | {p['what']} |")
    load, train = result["load"], result["phases"][2]["stage_cost"]
    lines += ["", f"The train stage's own cost record (`reports/costs/train.json`): {train['wall_s']:.1f} s for "
                  f"{train['items']} queries, peak {train['peak_rss_mb'] / 1024:.1f} GiB; bench/study_gpu.py counts the "
                  "stage's whole wall time above (the notebook's start included) as what it costs beside its steps.",
              "", f"Loading: {load['load_s']:.1f} s to read and check the prepared set and build the id lookups; then "
                  f"{load['s_per_batch'] * 1000:.1f} ms per batch of 16 rows ({load['batches']} batches of random rows), "
                  "which the data loader's workers pay beside the GPU's steps.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "reports" / "bench")
    parser.add_argument("--work", type=Path, help="folder for the caches and the pipeline (default: a new temporary "
                                                  "one, removed at the end)")
    parser.add_argument("--scale", type=float, default=1.0, help="share of the study's sizes (smoke: 0.001)")
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--child-load", type=Path, nargs=2, help=argparse.SUPPRESS)  # KD folder, JSON out
    options = parser.parse_args(argv)
    if options.child_load:
        kd_dir, out = options.child_load
        load_phase(kd_dir, options.batches, out)
        return 0
    if options.scale < 1 and options.out_dir.resolve() == (REPO / "reports" / "bench").resolve():
        parser.error("a --scale below 1 must not replace the committed reports/bench results: choose another --out-dir")
    import yaml

    from colbench.atomic import write_json, write_text
    from colbench.provenance import git_info

    work = options.work or Path(tempfile.mkdtemp(prefix="colbench-prepare-"))
    shutil.rmtree(work / "pipeline", ignore_errors=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    revision = params["prepare"]["kd"]["revision"]
    sizes = {k: max(100, round(v * options.scale)) for k, v in SIZES.items()}
    sizes["queries"] = sizes["train"] + 3  # the hub's queries config holds 3 queries no training row uses
    snapshot = work / "hub" / f"datasets--{HUB_ID.replace('/', '--')}" / "snapshots" / revision
    # A --work folder of an earlier run is reused (writing the data takes minutes) only at the same sizes.
    written, wanted = work / "synthetic.json", {"revision": revision, "scale": options.scale, "sizes": sizes}
    if not written.is_file() or json.loads(written.read_text()) != wanted:
        started = time.monotonic()
        for folder in ("hub", "beir"):
            shutil.rmtree(work / folder, ignore_errors=True)
        write_hub_snapshot(snapshot, sizes)
        write_beir_folders(work / "beir", options.scale)
        written.write_text(json.dumps(wanted))
        print(f"prepare_cpu: synthetic data written in {time.monotonic() - started:.0f} s", flush=True)
    pipeline = work / "pipeline"
    pipeline.mkdir(parents=True)
    # The prepare stage's preflight checks every resource of the run: the base model and the held-out set, which
    # it does not read, point at what this machine has. The train stage runs 3 steps of that tiny model.
    params["train"]["base_model"] = str(REPO / "tests" / "fixtures" / "pylate" / "modernbert" / "base")
    params["train"]["eval"]["dataset"] = None
    params["train"]["args"].update(max_steps=TRAIN_STEPS, logging_steps=1)
    (pipeline / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(work / "hub"), HF_DATASETS_CACHE=str(work / "datasets"),
               COLBENCH_BEIR_CACHE=str(work / "beir"), TOKENIZERS_PARALLELISM="false", TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    shutil.rmtree(work / "datasets", ignore_errors=True)  # the first run converts the hub's files anew
    def stage(notebook: str) -> list[str]:  # as dvc.yaml runs a stage
        return [sys.executable, "-m", "papermill", "--no-progress-bar", str(REPO / "notebooks" / notebook),
                f"reports/notebooks/{notebook}", "-p", "params_file", "params.yaml"]

    (pipeline / "reports" / "notebooks").mkdir(parents=True)
    phases = []
    what = "papermill notebooks/01_prepare.ipynb (kd.prepare_kd, beir_data.prepare_beir x 4, the output checks)"
    for phase in ("prepare, first run after `hf download` (with datasets' parquet -> Arrow conversion)",
                  "prepare from a warm cache"):
        phases.append({"phase": phase, **child(stage("01_prepare.ipynb"), env, pipeline), "what": what,
                       "stage_cost": json.loads((pipeline / "reports" / "costs" / "prepare.json").read_text())})
        print(f"prepare_cpu: {phase}: {phases[-1]['wall_s']:.0f} s, {phases[-1]['peak_rss_mb']:,} MiB", flush=True)
    phases.append({"phase": f"train stage, {TRAIN_STEPS} steps of a tiny ModernBERT",
                   **child(stage("02_train.ipynb"), env, pipeline),
                   "what": "papermill notebooks/02_train.ipynb: the study's settings and data-loader workers, "
                           "the tiny test model (the start-up, loading, steps and saving at this size)",
                   "stage_cost": json.loads((pipeline / "reports" / "costs" / "train.json").read_text())})
    print(f"prepare_cpu: {phases[-1]['phase']}: {phases[-1]['wall_s']:.0f} s", flush=True)
    timings = work / "load.json"
    loaded = child([sys.executable, __file__, "--child-load", str(pipeline / "data" / "kd"), str(timings),
                    "--batches", str(options.batches)], env, REPO)
    load = json.loads(timings.read_text())
    phases.append({"phase": "train: distillation set loaded", **loaded,
                   "what": f"kd.load_kd_dataset (read, check_kd, resolve_ids) + {load['batches']} batches of 16 rows"})
    print(f"prepare_cpu: loaded in {load['load_s']:.0f} s, {load['s_per_batch'] * 1000:.1f} ms per batch", flush=True)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(snapshot / "english_collection.parquet").metadata  # plain strings: 4 length bytes + text
    text_bytes = sum(meta.row_group(g).column(1).total_uncompressed_size - 4 * meta.row_group(g).num_rows
                     for g in range(meta.num_row_groups))
    git = git_info(REPO)
    result = {
        "bench": "prepare_cpu", "complete": True, "scale": options.scale, "sizes": sizes,
        "documents_text_gb": text_bytes / 1e9, "machine": cpu_name(), "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"), "commit": git["revision"], "dirty": git["dirty"],
        "phases": phases, "load": load,
        "warm_prepare_s": phases[1]["wall_s"], "train_stage_s": phases[2]["wall_s"],
        "train_load_s": load["load_s"],
    }
    options.out_dir.mkdir(parents=True, exist_ok=True)
    write_json(options.out_dir / "prepare_cpu.json", result)
    write_text(options.out_dir / "prepare_cpu.md", markdown(result))
    print(markdown(result))
    if not options.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
