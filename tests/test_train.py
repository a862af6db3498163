"""Distillation training: data validation, checkpoint bookkeeping, end-to-end run, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import TrainerCallback

from colbench.atomic import read_json, write_json
from colbench.checkpoints import CHECKPOINT_COMPLETE, JsonLog, config_hash, prepare_checkpoints
from colbench.errors import InputError
from colbench.kd import load_kd_dataset
from colbench.model import load_colbert, parameter_sha256
from colbench.train import resolve_precision, train, training_arguments, use_existing_checkpoint

FIXTURES = Path(__file__).parent / "fixtures"
KD = FIXTURES / "kd_tiny"
BERT = FIXTURES / "pylate" / "bert" / "base"
# ModernBERT has no dropout (nor has ModernBERT-base): training is deterministic, so splits of a step and DDP can be
# compared loss for loss. BERT draws dropout masks, whose stream depends on how a step is cut.
MODERNBERT = FIXTURES / "pylate" / "modernbert" / "base"
REPO = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def tiny_config(root: Path, **arg_overrides) -> dict:
    """train() kwargs for a seconds-long run: tiny BERT, 4 candidates, batch 2 x accumulation 2."""
    args = dict(
        learning_rate=1e-3,
        num_train_epochs=1,
        max_steps=4,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        warmup_ratio=0.1,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16="auto",
        tf32="auto",
        logging_steps=1,
        save_steps=2,
        save_total_limit=2,
    )
    args.update(arg_overrides)
    return dict(
        kd_dir=str(KD),
        output_dir=str(root / "model"),
        checkpoints_dir=str(root / "checkpoints"),
        log_path=str(root / "train_log.json"),
        base_model=str(BERT),
        model_kwargs=dict(embedding_dim=16, query_length=16, document_length=32),
        loss_kwargs=dict(n_ways=4, normalize_scores=True, temperature=1.0, masked_positions="zero"),
        args=args,
        seed=7,
    )


def child_env(**extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


def weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for path in sorted(folder.rglob("*.safetensors")):
        for name, tensor in load_file(path).items():
            tensors[f"{path.relative_to(folder)}:{name}"] = tensor
    return tensors


# ---------------------------------------------------------------------------------------- data
def test_kd_dataset_resolves_ids_to_texts_in_stored_order():
    dataset = load_kd_dataset(KD, n_ways=3, max_samples=5)
    raw = pq.read_table(KD / "train.parquet").to_pylist()
    queries = {r["query_id"]: r["text"] for r in pq.read_table(KD / "queries.parquet").to_pylist()}
    documents = {r["document_id"]: r["text"] for r in pq.read_table(KD / "documents.parquet").to_pylist()}

    assert dataset.num_rows == 5
    row = dataset[1]
    # Query first, then the documents, then the label column: the loss reads columns positionally.
    assert list(row) == ["query", "document_1", "document_2", "document_3", "scores"]
    assert row["query"] == queries[raw[1]["query_id"]]
    assert [row[f"document_{i}"] for i in (1, 2, 3)] == [documents[d] for d in raw[1]["document_ids"][:3]]
    assert row["scores"] == pytest.approx(raw[1]["scores"][:3])


def test_the_kd_transform_pickles_as_its_folder_and_resolves_the_same_after(tmp_path):
    # datasets fingerprints a transform by pickling it: with the texts inside, each training run pickled the study's
    # 3.7 GB of documents (and warned that it could not hash them). A data-loader worker started by spawn unpickles it.
    import pickle

    folder = tmp_path / "kd"
    shutil.copytree(KD, folder)
    dataset = load_kd_dataset(folder, n_ways=3)
    transform = dataset.format["format_kwargs"]["transform"]
    pickled = pickle.dumps(transform)
    texts = pq.read_table(folder / "documents.parquet")["text"].to_pylist()
    assert not any(text.encode() in pickled for text in texts)
    ids = dataset.with_format(None)[:4]
    assert pickle.loads(pickled)(dict(ids)) == transform(dict(ids)) == dataset[:4]
    assert pickle.dumps(load_kd_dataset(folder, n_ways=3).format["format_kwargs"]["transform"]) == pickled
    os.utime(folder / "documents.parquet", ns=(0, 0))  # the same folder with other documents: another fingerprint
    assert pickle.dumps(load_kd_dataset(folder, n_ways=3).format["format_kwargs"]["transform"]) != pickled
    with pytest.raises(InputError, match="changed while training read it"):  # a worker started before that
        pickle.loads(pickled)(dict(ids))


@pytest.mark.slow
def test_a_kd_set_with_more_than_2_gib_of_document_text_loads(tmp_path):
    # The study's documents hold about 3 GB of text: more than one string array's 32-bit offsets address, which
    # broke loading once (datasets pickled the whole column to fingerprint it). Found by bench/prepare_cpu.py.
    import pyarrow.compute as pc

    n, text = 1_100_000, "passage " * 250  # 2,000 characters each: 2.2 GB in all
    ids = pc.cast(pa.array(np.arange(n)), pa.string())
    documents = pa.table({"document_id": ids, "text": pa.chunked_array([pa.repeat(pa.scalar(text), n // 2)] * 2)})
    assert documents["text"].nbytes > 2**31
    pq.write_table(documents, tmp_path / "documents.parquet")  # dictionary-encoded on disk: small
    pq.write_table(pa.table({"query_id": ["q0", "q1"], "text": ["first query", "second query"]}), tmp_path / "queries.parquet")
    pq.write_table(pa.table({"query_id": ["q0", "q1"], "document_ids": [["0", "1", "2"], [str(n - 1), "5", "6"]],
                             "scores": [[3.0, 2.0, 1.0], [1.0, 0.5, 0.0]]}), tmp_path / "train.parquet")
    row = load_kd_dataset(tmp_path, n_ways=3)[1]
    assert row["query"] == "second query" and row["document_1"] == text and row["scores"] == [1.0, 0.5, 0.0]


def test_loading_the_kd_set_leaves_no_copy_in_the_datasets_cache(tmp_path, monkeypatch):
    # At the study's size an Arrow copy of the prepared set is about 4 GB, made anew for every folder the set is
    # prepared in (each `dvc exp run --temp`) and never removed.
    import datasets.config

    cache = tmp_path / "hf-datasets"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    folder = tmp_path / "kd"
    shutil.copytree(KD, folder)
    assert load_kd_dataset(folder, n_ways=3).num_rows > 0
    assert not cache.exists() or not any(path.is_file() for path in cache.rglob("*"))


def _corrupt(tmp_path: Path, table: str, edit) -> Path:
    folder = tmp_path / "kd"
    shutil.copytree(KD, folder)
    rows = pq.read_table(folder / table).to_pylist()
    edit(rows)
    schema = pq.read_schema(folder / table)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), folder / table)
    return folder


def _set(index, **values):
    def edit(rows):
        rows[index].update(values)

    return edit


@pytest.mark.parametrize(
    ("table", "edit", "expected"),
    [
        ("queries.parquet", lambda rows: rows.pop(3), r"1 train query id\(s\) are not in queries, e\.g\. 'q3'"),
        ("documents.parquet", lambda rows: rows.pop(0), r"document id\(s\) referenced by train are not in documents, e\.g\. 'd0'"),
        ("train.parquet", _set(2, document_ids=["d0", "d1"], scores=[0.9, 0.1]),
         r"1 train row\(s\) have fewer than n_ways=4 candidates, e\.g\. query 'q2'"),
        ("train.parquet", _set(5, scores=[0.5] * 11), r"different number of scores and document_ids, e\.g\. query 'q5'"),
        ("train.parquet", _set(6, scores=[0.5, float("nan")] + [0.1] * 10), r"non-finite score\(s\) \(NaN/inf\), e\.g\. in query 'q6'"),
        ("train.parquet", _set(7, scores=[float("inf")] + [0.1] * 11), r"non-finite score\(s\) \(NaN/inf\), e\.g\. in query 'q7'"),
        ("documents.parquet", _set(0, text=" "), r"1 documents have an empty text, e\.g\. document_id 'd0'"),
        ("train.parquet", lambda rows: rows.append(dict(rows[0])), r"train has 1 duplicate query_id\(s\), e\.g\. 'q0'"),
    ],
    ids=["missing-query", "missing-document", "short-list", "length-mismatch", "nan-score", "inf-score", "blank-text",
         "duplicate-query"],
)
def test_bad_kd_data_is_refused_before_training(tmp_path, table, edit, expected):
    # The prepare stage's checks (colbench.kd.check_kd) run again on the prepared folder; the message
    # names the folder and says to rerun prepare.
    folder = _corrupt(tmp_path, table, edit)
    with pytest.raises(InputError, match=re.escape(f"prepared KD folder {folder} (rerun prepare if it was edited): ") + f".*{expected}"):
        load_kd_dataset(folder, n_ways=4)


def test_train_refuses_bad_kd_data_before_its_first_step_and_keeps_the_previous_model(tmp_path):
    folder = _corrupt(tmp_path, "train.parquet", _set(6, scores=[0.5, float("nan")] + [0.1] * 10))
    config = {**tiny_config(tmp_path / "run"), "kd_dir": str(folder)}
    Path(config["output_dir"]).mkdir(parents=True)
    (Path(config["output_dir"]) / "model.safetensors").write_text("the previous run's model")
    with pytest.raises(InputError, match=r"non-finite score\(s\) \(NaN/inf\), e\.g\. in query 'q6'"):
        train(**config)
    assert not Path(config["checkpoints_dir"]).exists() and not Path(config["log_path"]).exists()
    assert (Path(config["output_dir"]) / "model.safetensors").read_text() == "the previous run's model"


def test_a_bad_score_beyond_the_first_n_ways_candidates_is_refused_too(tmp_path):
    # Never trained on, but prepare never writes one: its presence means the folder was damaged.
    folder = _corrupt(tmp_path, "train.parquet", _set(0, scores=[0.5] * 11 + [float("nan")]))
    with pytest.raises(InputError, match=r"non-finite score\(s\) \(NaN/inf\), e\.g\. in query 'q0'"):
        load_kd_dataset(folder, n_ways=4)


def test_max_samples_checks_only_the_rows_it_keeps(tmp_path):
    # A bad row past max_samples is not part of this run's data.
    folder = _corrupt(tmp_path, "train.parquet", _set(7, scores=[float("inf")] + [0.1] * 11))
    assert load_kd_dataset(folder, n_ways=4, max_samples=7).num_rows == 7


@pytest.mark.parametrize(
    ("remove", "expected"),
    [("documents.parquet", r"documents\.parquet: missing"), ("manifest.json", r"manifest\.json: missing")],
)
def test_missing_kd_file_is_named(tmp_path, remove, expected):
    from colbench.kd import kd_manifest

    folder = tmp_path / "kd"
    shutil.copytree(KD, folder)
    (folder / remove).unlink()
    with pytest.raises(InputError, match=expected):
        if remove == "manifest.json":
            kd_manifest(folder)
        else:
            load_kd_dataset(folder, n_ways=4)



# ------------------------------------------------------------------------------------ arguments
@pytest.mark.skipif(not NO_CUDA, reason="CPU behaviour")
@pytest.mark.parametrize(
    ("bf16", "tf32", "expected"),
    [("auto", "auto", (False, None)), (True, "auto", (True, None)), (False, False, (False, False))],
)
def test_precision_auto_is_fp32_on_cpu(bf16, tf32, expected):
    assert resolve_precision(bf16, tf32) == expected


@pytest.mark.skipif(not NO_CUDA, reason="CPU behaviour")
def test_tf32_without_a_gpu_is_refused():
    bf16, tf32 = "auto", True
    with pytest.raises(InputError, match=r"train\.args\.(bf16|tf32)"):
        resolve_precision(bf16, tf32)


def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it(monkeypatch):
    # A V100 or T4: torch counts its emulated bf16 as supported, and it is slower there than fp32.
    from colbench import encode

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *_: (7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert resolve_precision("auto", "auto") == (False, None)
    assert not encode._bf16_supported(torch.device("cuda"))


def test_training_arguments_translate_the_study_settings(tmp_path):
    args = training_arguments(tiny_config(tmp_path)["args"], output_dir=tmp_path, seed=3)
    assert args.warmup_steps == 0.1  # transformers 5 takes the ratio here
    assert (args.seed, args.data_seed, args.save_steps, args.bf16) == (3, 3, 2, False)


def test_one_process_that_sees_several_gpus_trains_the_studys_steps_on_one(tmp_path, monkeypatch):
    # Several GPUs and train.distributed: none. transformers' Trainer would wrap the model in nn.DataParallel:
    # micro-batches n_gpu times larger, so half the optimizer steps of twice the queries (and on the GPUs a failure at
    # the first step: the multi-vector model's outputs cannot be gathered). Stood in for on the CPU: two GPUs counted,
    # none available (DataParallel then calls the model as it is: the step count shows it).
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.warns(UserWarning, match=r"2 GPUs are visible and train.distributed is none: training uses one"):
        train(**tiny_config(tmp_path, max_steps=-1, num_train_epochs=1, use_cpu=False))
    steps = [r["step"] for r in read_json(tmp_path / "train_log.json")["records"] if "loss" in r]
    assert steps == [1, 2, 3, 4]  # 16 queries, 2 x 2 per step


def test_ddp_with_more_processes_than_gpus_is_refused_before_starting_them(tmp_path, monkeypatch):
    from colbench.train import run_training

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match=r"train.num_processes is 4 but 2 GPU\(s\) are visible: set it to at most 2"):
        run_training(distributed="ddp", num_processes=4, **tiny_config(tmp_path))


def test_a_run_is_not_resumed_in_another_precision(tmp_path, monkeypatch):
    # bf16/tf32 "auto" resolve per machine: checkpoints of a GPU run in bf16 are not resumed by a run in fp32.
    from colbench import train as training

    digests = []
    for bf16 in (True, False):
        monkeypatch.setattr(training, "resolve_precision", lambda *_, bf16=bf16: (bf16, None))
        settings = tiny_config(tmp_path)
        settings.pop("output_dir")
        digests.append(training.build_trainer(**settings)[1]["digest"])
    assert digests[0] != digests[1]


def test_tf32_turned_on_by_transformers_leaves_the_flags_torch_compile_reads_readable():
    # On a GPU, tf32=True makes transformers set torch's new fp32_precision API; torch.compile then reads the legacy
    # flags, which raise in that state (pytorch#166387). A fresh process: the precision flags are process-wide.
    script = textwrap.dedent("""
        import torch
        from transformers.utils.import_utils import enable_tf32
        from colbench.train import keep_legacy_tf32_flags_readable
        enable_tf32(True)  # what TrainingArguments(tf32=True) calls
        keep_legacy_tf32_flags_readable()
        print(torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision(),
              torch.backends.cuda.matmul.fp32_precision)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "high", "tf32"]


# ---------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize(("overrides", "steps"), [({"max_steps": 3}, 3), ({"max_steps": -1, "num_train_epochs": 0.5}, 2)])
def test_a_run_too_short_to_log_a_loss_is_refused_before_training(tmp_path, overrides, steps):
    # Otherwise it trains, saves, and then fails: the notebook plots the logged losses. 16 queries, 4 per step.
    with pytest.raises(InputError, match=rf"logging_steps is {steps + 1}, but this run has {steps} optimizer step"):
        train(**tiny_config(tmp_path, **overrides, logging_steps=steps + 1))
    assert not (tmp_path / "model").exists() and not list((tmp_path / "checkpoints").glob("checkpoint-*"))


def test_a_short_run_that_logs_its_first_step_trains(tmp_path):
    # bench/train_gpu.py's smoke: 4 steps, logging every 5 but step 1 too.
    train(**tiny_config(tmp_path, max_steps=4, logging_steps=5, logging_first_step=True))
    assert [r["step"] for r in read_json(tmp_path / "train_log.json")["records"] if "loss" in r] == [1]


def test_config_hash_ignores_key_order_but_not_values():
    assert config_hash({"a": 1, "b": {"c": 2, "d": 3}}) == config_hash({"b": {"d": 3, "c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def _checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        write_json(path / CHECKPOINT_COMPLETE, {"step": step})
    return path


def test_same_config_resumes_from_last_complete_checkpoint(tmp_path):
    assert prepare_checkpoints(tmp_path, "h1", {"x": 1}, main=True) is None
    _checkpoint(tmp_path, 2), _checkpoint(tmp_path, 10), _checkpoint(tmp_path, 12, complete=False)
    resume = prepare_checkpoints(tmp_path, "h1", {"x": 1}, main=True)
    assert resume == tmp_path / "checkpoint-10"  # numeric order, not "10" < "2"
    assert not (tmp_path / "checkpoint-12").exists()  # half-written checkpoint removed


def test_a_finished_run_rerun_is_restored_not_trained_further(tmp_path, monkeypatch):
    # 3 steps of a 4-step epoch: from checkpoint-3 the trainer would run a 4th step (it checks for the last step
    # only after a step). A rerun of the same configuration (dvc repro -f) must give the same model, log and
    # canary verdicts (against a reference curve made to start at step 1, far from this run's losses).
    import numpy as np

    monkeypatch.setattr("colbench.training_curve.reference_curve", lambda name: (np.array([1, 3]), np.array([50.0, 50.0])))
    config = {**tiny_config(tmp_path, max_steps=3, save_steps=2),
              "canary": {"reference": "study", "tolerance": 0.25, "window": 1, "from_step": 1}}
    first = read_json(Path(train(**config)) / "colbench_train.json")
    first_log = read_json(config["log_path"])["records"]
    second = read_json(Path(train(**config)) / "colbench_train.json")
    assert (second["global_step"], second["resumed_from_step"]) == (3, 3)
    assert second["parameter_sha256"] == first["parameter_sha256"]
    assert second["canary"] == first["canary"] and first["canary"]  # the verdicts, from the restored log
    assert read_json(config["log_path"])["records"] == first_log
    assert not (tmp_path / "checkpoints" / "checkpoint-4").exists()


def test_other_config_clears_stale_checkpoints(tmp_path):
    prepare_checkpoints(tmp_path, "h1", {"x": 1}, main=True)
    _checkpoint(tmp_path, 4)
    assert prepare_checkpoints(tmp_path, "h2", {"x": 2}, main=True) is None
    assert not (tmp_path / "checkpoint-4").exists()
    assert read_json(tmp_path / "colbench_checkpoints.json")["config_hash"] == "h2"


def test_log_merges_training_and_evaluation_entries_by_step():
    history = [
        {"eval_ndcg": 0.1, "eval_runtime": 1.0, "epoch": 0, "step": 0},
        {"loss": 0.5, "grad_norm": 2.0, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
        {"loss": 0.4, "grad_norm": 1.0, "learning_rate": 5e-4, "epoch": 1.0, "step": 2},
        {"eval_ndcg": 0.3, "eval_runtime": 1.0, "epoch": 1.0, "step": 2},
        {"train_runtime": 3.0, "train_loss": 0.45, "epoch": 1.0, "step": 2},
    ]
    records, summary = JsonLog("unused", {}).records(history)
    assert records == [
        {"step": 0, "eval_ndcg": 0.1, "eval_runtime": 1.0, "epoch": 0},
        {"step": 1, "loss": 0.5, "grad_norm": 2.0, "learning_rate": 1e-3, "epoch": 0.5},
        {"step": 2, "loss": 0.4, "grad_norm": 1.0, "learning_rate": 5e-4, "epoch": 1.0, "eval_ndcg": 0.3, "eval_runtime": 1.0},
    ]
    assert summary == {"train_runtime": 3.0, "train_loss": 0.45, "epoch": 1.0}


# ------------------------------------------------------------------------------------- training
def tiny_evaluator():
    """A real multi-vector IR evaluator on the fixture: each query's first three candidates are relevant."""
    from sentence_transformers.multi_vector_encoder.evaluation import MultiVectorInformationRetrievalEvaluator

    train_rows = pq.read_table(KD / "train.parquet").to_pylist()
    queries = {r["query_id"]: r["text"] for r in pq.read_table(KD / "queries.parquet").to_pylist()}
    corpus = {r["document_id"]: r["text"] for r in pq.read_table(KD / "documents.parquet").to_pylist()}
    relevant = {r["query_id"]: set(r["document_ids"][:3]) for r in train_rows}
    return MultiVectorInformationRetrievalEvaluator(queries, corpus, relevant, name="tiny", ndcg_at_k=[10], show_progress_bar=False)


def test_train_writes_a_loadable_self_describing_model_and_log(tmp_path, monkeypatch):
    from sentence_transformers import MultiVectorEncoder

    from colbench.train import training_summary

    config = tiny_config(tmp_path)
    output = train(**config, evaluator=tiny_evaluator(), eval_steps=2, provenance_extra={"stage": "test"})

    model = MultiVectorEncoder(str(output))
    record = read_json(output / "colbench_train.json")
    assert record["parameter_sha256"] == parameter_sha256(model)
    assert record["replica_parameter_sha256"] == [record["parameter_sha256"]]
    assert record["data"]["source"] == read_json(KD / "manifest.json")["source"]
    assert (record["seed"], record["global_step"], record["world_size"]) == (7, 4, 1)
    assert record["args"] == config["args"] and record["loss"] == config["loss_kwargs"]
    assert record["resolved_precision"]["bf16"] is (not NO_CUDA)
    assert record["provenance"]["packages"]["sentence-transformers"] and record["provenance_extra"] == {"stage": "test"}
    assert model.prompts == {"query": "[Q] ", "document": "[D] "}

    log = read_json(config["log_path"])
    steps = [r["step"] for r in log["records"]]
    assert steps == [0, 1, 2, 3, 4]  # evaluation at start (step 0), then one record per step
    trained = [r for r in log["records"] if "loss" in r]
    assert all(math.isfinite(r["loss"]) and {"epoch", "learning_rate", "grad_norm"} <= set(r) for r in trained)
    assert record["final_loss"] == trained[-1]["loss"]
    assert training_summary(output, config["log_path"], None)["queries_this_run"] == 4 * 2 * 2  # steps x batch
    evaluated = [r["step"] for r in log["records"] if "eval_tiny_maxsim_ndcg@10" in r]
    assert evaluated == [0, 2, 4]  # on start, every eval_steps, at the end
    # Checkpoints hold no pickled training arguments and are marked complete.
    checkpoints = sorted(Path(config["checkpoints_dir"]).glob("checkpoint-*"))
    assert [p.name for p in checkpoints] == ["checkpoint-2", "checkpoint-4"]
    assert all((p / CHECKPOINT_COMPLETE).is_file() and not (p / "training_args.bin").exists() for p in checkpoints)

    # Running the stage again with the same settings resumes at the end: no step is redone.
    before = weights(output)
    train(**config, evaluator=tiny_evaluator(), eval_steps=2)
    again = read_json(output / "colbench_train.json")
    assert (again["resumed_from_step"], again["global_step"]) == (4, 4)
    assert training_summary(output, config["log_path"], None)["queries_this_run"] == 0  # the stage's cost counts none
    after = weights(output)
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert read_json(config["log_path"])["records"] == log["records"]

    # After an edit of the training code (DVC reruns the stage), the old checkpoints are not resumed: it trains anew.
    monkeypatch.setattr("colbench.train.training_code", lambda: {"colbench.loss": "edited"})
    train(**config, evaluator=tiny_evaluator(), eval_steps=2)
    anew = read_json(output / "colbench_train.json")
    assert (anew["resumed_from_step"], anew["global_step"]) == (None, 4)

    # So after an edit of what the stage writes besides the weights (the log's cadence, the held-out evaluation's
    # steps): resumed, the finished run would keep the old log.
    train(**{**config, "args": {**config["args"], "logging_steps": 2}}, evaluator=tiny_evaluator(), eval_steps=4)
    relogged = read_json(output / "colbench_train.json")
    assert (relogged["resumed_from_step"], relogged["global_step"]) == (None, 4)
    assert [r["step"] for r in read_json(config["log_path"])["records"]] == [0, 2, 4]


def test_a_resumed_run_publishes_the_untrained_models_run_again(tmp_path):
    # DVC removes the train stage's outputs before it reruns the stage, and a resumed run has no step 0 to evaluate:
    # the untrained model's run (the report's per-query baseline) is kept with the checkpoints and published again.
    from colbench.heldout import make_evaluator

    shutil.copytree(FIXTURES / "beir_tiny", tmp_path / "datasets" / "tiny")
    published = tmp_path / "baseline_runs"

    def evaluator(ignore_identical_ids=True):
        return make_evaluator("tiny", datasets_dir=tmp_path / "datasets", baseline_runs=published,
                              ignore_identical_ids=ignore_identical_ids)

    config = tiny_config(tmp_path)
    train(**config, evaluator=evaluator(), eval_steps=2)
    baseline = (published / "tiny.trec").read_text()
    assert len(baseline.splitlines()) > 1 and baseline.split()[-1] == "untrained"
    shutil.rmtree(published)  # what DVC does before a rerun
    shutil.rmtree(Path(config["checkpoints_dir"]) / "checkpoint-4")  # killed after step 2's checkpoint
    train(**config, evaluator=evaluator(), eval_steps=2)
    assert read_json(Path(config["output_dir"]) / "colbench_train.json")["resumed_from_step"] == 2
    assert (published / "tiny.trec").read_text() == baseline

    # The held-out evaluation's protocol decides its numbers: with another, the checkpoints are not resumed.
    train(**config, evaluator=evaluator(ignore_identical_ids=False), eval_steps=2)
    assert read_json(Path(config["output_dir"]) / "colbench_train.json")["resumed_from_step"] is None


RUNNER = """
import json, os, signal, sys
from transformers import TrainerCallback
from colbench.train import train

config, kill_at = json.loads(open(sys.argv[1]).read()), int(sys.argv[2])

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, as a crash or a preemption

train(**config, callbacks=[KillAt()])
"""


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint_and_matches_an_uninterrupted_run(tmp_path):
    runner = tmp_path / "runner.py"
    runner.write_text(textwrap.dedent(RUNNER))
    reference = train(**tiny_config(tmp_path / "reference", max_steps=6))

    config = tiny_config(tmp_path / "interrupted", max_steps=6)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config))
    run = [sys.executable, str(runner), str(config_file)]
    # Children keep this process's thread count: a different one changes float summation order.
    killed = subprocess.run([*run, "3"], env=child_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not Path(config["output_dir"]).exists()  # no partial model
    interrupted_log = read_json(config["log_path"])  # still valid JSON
    assert [r["step"] for r in interrupted_log["records"]] == [1, 2]
    assert sorted(p.name for p in Path(config["checkpoints_dir"]).glob("checkpoint-*")) == ["checkpoint-2"]

    resumed = subprocess.run([*run, "0"], env=child_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = read_json(config["log_path"])
    assert log["resumed_from_step"] == 2
    assert [r["step"] for r in log["records"]] == [1, 2, 3, 4, 5, 6]  # continues, does not restart
    assert read_json(Path(config["output_dir"]) / "colbench_train.json")["resumed_from_step"] == 2
    # The trainer restores weights, optimizer, scheduler, RNG and data position: bit-identical result.
    ours, theirs = weights(Path(config["output_dir"])), weights(reference)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    reference_losses = [r["loss"] for r in read_json(tmp_path / "reference" / "train_log.json")["records"]]
    assert [r["loss"] for r in log["records"]] == reference_losses


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_keeps_the_step_and_the_losses_of_one_process(tmp_path, monkeypatch):
    # The stage's own path (`run_training`, as 02_train calls it): torchrun's processes, each building the
    # held-out evaluator, against the same call in one process.
    from sentence_transformers import MultiVectorEncoder

    from colbench.train import run_training

    shutil.copytree(FIXTURES / "beir_tiny", tmp_path / "datasets" / "tiny")
    for name, value in child_env(OMP_NUM_THREADS="1").items():  # two processes on a shared machine
        monkeypatch.setenv(name, value)
    launch = subprocess.run  # torchrun, bounded: a stuck rendezvous must fail the test, not hang `make test`
    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: launch(*args, **{"timeout": 300, **kwargs}))

    def stage(name: str, **distributed) -> tuple[dict, dict]:
        config = {**tiny_config(tmp_path / name, max_steps=3), "base_model": str(MODERNBERT), "eval_steps": 3}
        heldout = dict(dataset="tiny", datasets_dir=str(tmp_path / "datasets"),
                       baseline_runs=str(tmp_path / name / "baseline_runs"))
        return config, run_training(**config, evaluator_kwargs=heldout, **distributed)

    single, one_summary = stage("single")
    config, summary = stage("ddp", distributed="ddp", num_processes=2)
    record = read_json(Path(config["output_dir"]) / "colbench_train.json")
    assert record["world_size"] == 2
    assert record["batch_split"] == {"micro_batch": 2, "accumulation": 1, "document_chunk": None, "pack_documents": False}
    digests = record["replica_parameter_sha256"]  # each rank hashed its own parameters
    assert len(digests) == 2 and digests[0] == digests[1] == record["parameter_sha256"]
    assert parameter_sha256(MultiVectorEncoder(config["output_dir"])) == record["parameter_sha256"]
    # The step stays batch 2 x accumulation 2 = 4 of the 16 queries (2 ranks x 2, no accumulation), the same
    # queries as one process sees, so the same losses (to float summation order) and held-out numbers.
    ddp = [r for r in read_json(config["log_path"])["records"] if "loss" in r]  # not step 0's evaluation
    one = [r for r in read_json(single["log_path"])["records"] if "loss" in r]
    assert [(r["step"], r["epoch"]) for r in ddp] == [(1, 0.25), (2, 0.5), (3, 0.75)]
    for ours, theirs in zip(ddp, one, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-4)
    for key in ("heldout_start_ndcg@10", "heldout_end_ndcg@10", "heldout_end_recall@100"):
        assert summary[key] == pytest.approx(one_summary[key], abs=1e-6), key
    assert summary["queries_this_run"] == one_summary["queries_this_run"] == 12
    assert (tmp_path / "ddp" / "baseline_runs" / "tiny.trec").read_text().split()[-1] == "untrained"


@pytest.mark.parametrize(("n_rows", "per_device", "accumulation", "world", "drop_last", "epochs", "steps"), [
    (16, 2, 2, 1, False, 1, 4), (14, 2, 2, 1, False, 1, 4), (14, 2, 2, 1, False, 0.5, 2),
    (14, 2, 1, 2, True, 1, 3),  # DDP: what 2 gloo processes ran on 14 queries (7 batches of 2: 3 whole rounds)
    (808_728, 4, 1, 4, True, 1, 50_545),  # the study on 4 GPUs: its last 8 queries left out, as transformers 4.48 did
])
def test_the_planned_step_count_is_the_trainers(n_rows, per_device, accumulation, world, drop_last, epochs, steps):
    from types import SimpleNamespace

    from colbench.train import planned_steps

    args = SimpleNamespace(max_steps=-1, per_device_train_batch_size=per_device, gradient_accumulation_steps=accumulation,
                           world_size=world, dataloader_drop_last=drop_last, num_train_epochs=epochs)
    assert planned_steps(args, n_rows) == steps


@pytest.mark.slow
def test_the_planned_step_count_is_what_the_trainer_runs(tmp_path):
    # `train` knows a finished run by this count: on an epoch whose last step is a partial accumulation (14 queries,
    # 2 x 2 per step), a count one short would skip the last step of a resumed run, one too many retrain a finished one.
    from colbench.train import build_trainer

    config = {**tiny_config(tmp_path, max_steps=-1), "max_samples": 14}
    del config["output_dir"]
    trainer, run = build_trainer(**config)
    trainer.train()
    assert trainer.state.global_step == run["planned_steps"] == 4


def test_a_batch_split_keeps_the_optimizer_step():
    from colbench.train import batch_split

    assert batch_split(4, 4) == (4, 4)
    assert batch_split(4, 4, micro_batch=16) == (16, 1)
    assert batch_split(4, 4, world_size=2) == (4, 2)
    assert batch_split(4, 4, micro_batch=8, world_size=2) == (8, 1)
    for micro, world in ((3, 1), (16, 2)):
        with pytest.raises(InputError, match=r"cannot make an optimizer step of 16 queries"):
            batch_split(4, 4, micro_batch=micro, world_size=world)


def test_every_split_of_a_step_gives_the_same_training(tmp_path):
    # One micro-batch of 4, 2 x 2 or 4 x 1: the same queries per step, the same mean loss, the same update.
    logs, weights_by_split, forwards = {}, {}, {}
    for micro in (1, 2, 4):
        config = {**tiny_config(tmp_path / f"micro{micro}", max_steps=3), "base_model": str(MODERNBERT)}
        counter = EncoderTokens()
        output = train(**config, micro_batch=micro, callbacks=[counter])
        weights_by_split[micro], forwards[micro] = weights(output), counter.calls
        logs[micro] = [r for r in read_json(config["log_path"])["records"] if "loss" in r]
        split = read_json(output / "colbench_train.json")["batch_split"]
        assert (split["micro_batch"], split["accumulation"]) == (micro, 4 // micro)
    # The split is real: half the queries per forward pass, twice the forward passes.
    assert forwards[1] == 2 * forwards[2] == 4 * forwards[4] > 0, forwards
    for micro in (1, 4):
        for ours, theirs in zip(logs[micro], logs[2], strict=True):
            assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
            assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
        for name, tensor in weights_by_split[micro].items():
            torch.testing.assert_close(tensor, weights_by_split[2][name], atol=1e-5, rtol=0)


class EncoderTokens(TrainerCallback):
    """Counts the token positions the encoder computes (padding included), and its forward passes, while training."""

    def __init__(self) -> None:
        self.tokens = self.calls = 0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model[0].auto_model.get_input_embeddings().register_forward_pre_hook(self.count)

    def count(self, module, inputs):
        if module.training:  # training steps, not an encode the trainer runs on the side (in eval mode)
            self.tokens += inputs[0].numel()
            self.calls += 1


def test_document_chunks_train_the_same_with_less_padding(tmp_path, kd_folder):
    # train.document_chunk: each query's candidates put longest first and the micro-batch's documents embedded in
    # chunks, each as wide as its longest: the same losses, gradient norms and weights as one forward padded to the
    # widest, and fewer token positions through the encoder.
    rng = random.Random(3)
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda omicron".split()
    documents = {f"d{i}": " ".join(rng.choice(words) for _ in range(rng.randint(1, 15))) for i in range(48)}
    queries = {f"q{i}": f"{words[i]} and {words[-i]}" for i in range(12)}
    rows = [{"query_id": f"q{i}", "document_ids": [f"d{4 * i + j}" for j in range(4)],
             "scores": [round(rng.random(), 4) for _ in range(4)]} for i in range(12)]
    kd = kd_folder(queries, documents, rows)
    logs, trained, computed = {}, {}, {}
    for chunk in (None, 2):
        counter = EncoderTokens()
        config = {**tiny_config(tmp_path / f"chunk{chunk}", max_steps=3), "base_model": str(MODERNBERT), "kd_dir": str(kd)}
        trained[chunk] = train(**config, document_chunk=chunk, callbacks=[counter])
        logs[chunk] = [r for r in read_json(config["log_path"])["records"] if "loss" in r]
        computed[chunk] = counter.tokens
    assert len(logs[2]) == 3
    for ours, theirs in zip(logs[2], logs[None], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6)
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5)
    # Weights are compared through what they compute: Adam turns the rounding noise of gradients that are zero in
    # exact arithmetic (attention logits shifted alike for every key) into updates of the learning rate's size.
    texts = list(documents.values())
    encoded = {chunk: load_colbert(str(folder)).encode_document(texts) for chunk, folder in trained.items()}
    for ours, theirs in zip(encoded[2], encoded[None], strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert computed[2] < 0.85 * computed[None], computed  # queries included: they are not chunked


def test_a_larger_micro_batch_keeps_each_documents_padding_as_the_study_scored_it(tmp_path, kd_folder, monkeypatch):
    # masked_positions "zero" (PyLate's scoring, the study's) lets a document's padding score 0 in its max, and the
    # padding depends on the widest document of the micro-batch: in one micro-batch of 4 instead of the study's
    # 2 x 2, the widest document of one group would get padding it never had. No punctuation: no skiplisted token.
    from colbench import loss as loss_module
    from colbench.model import colbert_settings, load_colbert

    rng = random.Random(3)
    words = "river city water energy model data symptoms protein market wind tunnel lift".split()
    queries = {f"q{i}": " ".join(rng.choice(words) for _ in range(4)) for i in range(12)}
    # Even queries' documents are one word each (as wide as one another: no padding in a group of two of them),
    # odd queries' six words: a step that puts two even queries in one group pads their documents in one of 4.
    documents = {f"d{4 * i + j}": " ".join(rng.choice(words) for _ in range(1 if i % 2 == 0 else 6))
                 for i in range(12) for j in range(4)}
    rows = [{"query_id": f"q{i}", "document_ids": [f"d{4 * i + j}" for j in range(4)],
             "scores": [round(rng.random(), 4) for _ in range(4)]} for i in range(12)]
    kd = kd_folder(queries, documents, rows)

    # The ModernBERT checkpoint the study's software trained: its token vectors do score below 0 (a random
    # projection of the untrained base scores every pair above 0, where a 0 never wins the max).
    checkpoint = FIXTURES / "pylate" / "modernbert" / "pylate-colbert"
    settings = colbert_settings(load_colbert(str(checkpoint)))

    def losses(name, micro):
        config = {**tiny_config(tmp_path / name, max_steps=3), "init_checkpoint": str(checkpoint),
                  "model_kwargs": settings, "kd_dir": str(kd)}
        train(**config, micro_batch=micro)
        return [r["loss"] for r in read_json(config["log_path"])["records"] if "loss" in r]

    study, one_forward = losses("study", None), losses("micro4", 4)
    assert len(study) == 3 and one_forward == pytest.approx(study, abs=1e-6)
    # The data does exercise it: scored within the batch's width instead, the losses move.
    monkeypatch.setattr(loss_module.PyLateKDScores, "_within_group_width", lambda self, mask: torch.ones_like(mask))
    assert losses("micro4_batch_width", 4) != pytest.approx(study, abs=1e-4)


def test_an_existing_checkpoint_is_recorded_not_trained(tmp_path):
    from colbench.model import load_colbert
    from colbench.training_curve import plot_training

    checkpoint = str(Path(__file__).parent / "fixtures" / "pylate" / "bert" / "pylate-colbert")
    summary = use_existing_checkpoint(checkpoint, tmp_path / "model", log_path=tmp_path / "log.json",
                                      baseline_runs=tmp_path / "baseline")
    assert summary["trained"] is False and summary["checkpoint"] == checkpoint
    assert read_json(tmp_path / "model" / "checkpoint.json")["checkpoint"] == checkpoint
    pointed = load_colbert(str(tmp_path / "model"))
    original = load_colbert(checkpoint)
    torch.testing.assert_close(pointed.encode_document(["a test"])[0], original.encode_document(["a test"])[0])
    assert read_json(tmp_path / "log.json")["records"] == [] and (tmp_path / "baseline").is_dir()
    assert plot_training([], tmp_path / "training.png", checkpoint=checkpoint).stat().st_size > 1000


def test_a_hub_checkpoint_is_evaluated_at_the_commit_the_train_stage_loaded(tmp_path, hub_cache):
    # `hf download` of a published checkpoint at two commits, the cache copied to an offline machine: the pointer
    # the train stage writes pins the commit it loaded, and the encode stage loads that one after the hub moved on.
    from colbench.model import model_fingerprint

    hub_id, old, new = "colbench-tests/colbert", "a" * 40, "b" * 40
    published = BERT.parent / "pylate-colbert"
    repo = hub_cache(hub_id, {old: published, new: MODERNBERT.parent / "pylate114-colbert"}, latest=old, repo_type="model")
    stage = {"log_path": tmp_path / "log.json", "baseline_runs": tmp_path / "baseline"}
    use_existing_checkpoint(hub_id, tmp_path / "latest", **stage)  # train.model_revision: null
    (repo / "refs" / "main").write_text(new)  # a later `hf download` fetched a new commit
    latest = load_colbert(str(tmp_path / "latest"))
    assert read_json(tmp_path / "latest" / "checkpoint.json")["revision"] == latest.colbench_revision == old
    assert model_fingerprint(latest)["sha256"] == model_fingerprint(load_colbert(str(published)))["sha256"]
    use_existing_checkpoint(hub_id, tmp_path / "pinned", revision=old, **stage)  # train.model_revision: <old>
    assert load_colbert(str(tmp_path / "pinned")).colbench_revision == old
    assert load_colbert(hub_id).colbench_revision == new  # unpinned, a hub id is the latest
    with pytest.raises(InputError, match=r"train.model_revision 'a{40}' .* is a local folder"):
        load_colbert(str(tmp_path / "pinned"), revision=old)  # a pointer is pinned by its own revision
    # A pointer written before revisions were recorded (another run's models/colbert), named by this stage: the
    # commit loaded through it is kept. A snapshot folder named as a local path is a folder, with no revision.
    (repo / "refs" / "main").write_text(old)
    write_json(tmp_path / "older" / "checkpoint.json", {"checkpoint": hub_id})
    use_existing_checkpoint(str(tmp_path / "older"), tmp_path / "through", **stage)
    (repo / "refs" / "main").write_text(new)
    assert load_colbert(str(tmp_path / "through")).colbench_revision == old
    use_existing_checkpoint(str(repo / "snapshots" / new), tmp_path / "folder", **stage)
    assert load_colbert(str(tmp_path / "folder")).colbench_revision is None
    with pytest.raises(InputError, match=rf"{hub_id}' at revision c{{40}}: .*`hf download {hub_id} --revision c{{40}}`"):
        use_existing_checkpoint(hub_id, tmp_path / "missing", revision="c" * 40, **stage)


def test_a_model_trained_from_a_hub_base_encoder_records_its_commit(tmp_path, hub_cache):
    hub_cache("colbench-tests/encoder", {"a" * 40: BERT, "b" * 40: BERT}, latest="b" * 40, repo_type="model")
    config = {**tiny_config(tmp_path, max_steps=1), "base_model": "colbench-tests/encoder", "model_revision": "a" * 40}
    assert read_json(Path(train(**config)) / "colbench_train.json")["model_revision"] == "a" * 40
    with pytest.raises(InputError, match=r"train.model_revision 'a{40}' pins .* train.base_model '.*' is a local folder"):
        train(**{**tiny_config(tmp_path / "local"), "model_revision": "a" * 40})


def test_a_checkpoint_inside_the_stages_own_output_is_refused_and_the_model_kept(tmp_path):
    model = tmp_path / "model"
    shutil.copytree(Path(__file__).parent / "fixtures" / "pylate" / "bert" / "pylate-colbert", model)
    before = sorted(p.name for p in model.iterdir())
    with pytest.raises(InputError, match=r"train.checkpoint .* is this stage's own output"):
        use_existing_checkpoint(str(model), model, log_path=tmp_path / "log.json", baseline_runs=tmp_path / "b")
    assert sorted(p.name for p in model.iterdir()) == before


# ------------------------------------------------------------------ the study's software, step by step
@pytest.mark.parametrize("speed_levers", [False, True, "compiled"],
                         ids=["as_the_study", "one_forward_chunks_packed_and_workers", "compiled_fused_adamw"])
def test_three_training_steps_follow_the_study_softwares_trajectory(tmp_path, kd_folder, study_settings, speed_levers):
    # PyLate 1.1.4 / sentence-transformers 3.3.0 trained pylate-colbert/ for 3 steps (trajectory.json); the train
    # stage's entry point (run_training, as notebooks/02_train.ipynb calls it) from the same checkpoint matches,
    # also with #12's levers: the step's queries in one forward pass, their documents embedded in chunks without
    # their padding (packed), the batches tokenised by two data-loader worker processes; and the model compiled
    # (torch.compile), the optimizer fused AdamW.
    from sentence_transformers import MultiVectorEncoder

    from colbench.train import run_training

    folder = FIXTURES / "pylate" / "modernbert"
    trajectory = json.loads((folder / "trajectory.json").read_text())
    recipe = trajectory["settings"]
    settings = study_settings(
        per_device_train_batch_size=recipe["per_device_train_batch_size"],
        gradient_accumulation_steps=recipe["gradient_accumulation_steps"], max_steps=recipe["max_steps"],
        learning_rate=recipe["learning_rate"], warmup_ratio=recipe["warmup_ratio"])
    settings["loss_kwargs"]["n_ways"] = trajectory["n_ways"]
    if speed_levers:
        settings.update(micro_batch=recipe["per_device_train_batch_size"] * recipe["gradient_accumulation_steps"],
                        document_chunk=4, pack_documents=speed_levers is True)
        settings["args"]["dataloader_num_workers"] = 2
    if speed_levers == "compiled":
        settings["args"].update(torch_compile=True, optim="adamw_torch_fused", dataloader_num_workers=0)
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
    summary = run_training(
        kd_dir=kd_folder(trajectory["queries"], trajectory["documents"], trajectory["train"]),
        output_dir=tmp_path / "model", checkpoints_dir=tmp_path / "ckpt", log_path=tmp_path / "log.json",
        base_model="unused", init_checkpoint=str(folder / "pylate-colbert"), seed=recipe["seed"], **settings)
    assert summary["global_step"] == 3
    if speed_levers == "compiled":  # the steps ran compiled graphs
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0

    logged = [r for r in read_json(tmp_path / "log.json")["records"] if "loss" in r]
    for ours, theirs in zip(logged, trajectory["steps"], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=1e-6), ours["step"]
        assert ours["grad_norm"] == pytest.approx(theirs["grad_norm"], rel=1e-5), ours["step"]
    reference = json.loads((folder / "reference.json").read_text())
    model = MultiVectorEncoder(str(tmp_path / "model"))
    with np.load(folder / "trajectory.npz") as expected:
        for kind, texts, encode in (("query", reference["queries"], model.encode_query),
                                    ("document", reference["documents"], model.encode_document)):
            for i, embedding in enumerate(encode(texts, convert_to_numpy=True)):
                np.testing.assert_allclose(embedding, expected[f"{kind}_{i}"], atol=1e-5, rtol=0)


def test_the_train_stage_reads_the_nanobeir_metric_the_evaluator_logs(tmp_path):
    # The study's held-out evaluation is NanoBEIR (online); a local copy in its layout stands in for the hub.
    from colbench.heldout import log_key, make_evaluator
    from colbench.train import training_summary

    config = tiny_config(tmp_path, max_steps=2)
    evaluator = make_evaluator("nanobeir", datasets_dir=tmp_path, nanobeir_source=str(FIXTURES / "nanobeir_tiny"),
                               nanobeir_subsets=["scifact"])
    train(**config, evaluator=evaluator, eval_steps=2)
    summary = training_summary(config["output_dir"], config["log_path"], "nanobeir")
    key = log_key("nanobeir", "ndcg@10")
    evaluated = [(r["step"], r[key]) for r in read_json(config["log_path"])["records"] if key in r]
    assert [step for step, _ in evaluated] == [0, 2]  # at the start, then every eval_steps to the end
    assert (summary["heldout_start_ndcg@10"], summary["heldout_end_ndcg@10"]) == (evaluated[0][1], evaluated[-1][1])
    assert 0 < summary["heldout_start_ndcg@10"] <= 1


def test_a_checkpoint_with_other_settings_is_refused(tmp_path):
    config = tiny_config(tmp_path)  # query_length 16, document_length 32: the fixture checkpoint has 32 and 180
    checkpoint = str(FIXTURES / "pylate" / "bert" / "pylate-colbert")
    with pytest.raises(InputError, match=r"set train\.model\.embedding_dim: 128, train\.model\.query_length: 32, "
                                         r"train\.model\.document_length: 180 to train it as it is"):
        train(**{**config, "model_kwargs": dict(embedding_dim=16, query_length=16, document_length=32)},
              init_checkpoint=checkpoint)
    assert not Path(config["output_dir"]).exists()
