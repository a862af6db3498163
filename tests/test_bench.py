"""The GPU benchmarks (`bench/gpu.sh`: train_gpu.py, collate.py, study_gpu.py) and the prepare stage's benchmark
(`bench/prepare_cpu.py`, whose result study_gpu.py adds to the study's time) at smoke size on the CPU.

The H200 they are written for is lent to few sessions, for one short run: nothing a CPU can show may break them
there (a training setting refused by a new input check once failed every configuration of the sweep).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_env(**variables: str) -> dict[str, str]:
    """This environment with ``variables`` and the repository's src/ first on PYTHONPATH (bench scripts import colbench)."""
    return dict(os.environ, **variables,
                PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))


@pytest.fixture
def study_gpu(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import study_gpu

    return study_gpu


@pytest.mark.slow
def test_the_gpu_benchmarks_measure_training_and_project_the_study_at_smoke_size(tmp_path):
    env = bench_env(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")

    def bench(script: str, *args: str) -> None:
        done = subprocess.run([sys.executable, f"bench/{script}", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    smoke = ["--smoke", "--work", str(tmp_path / "work")]
    # The sweep's fastest configuration short of torch.compile (its levers together), then the study's own.
    bench("train_gpu.py", *smoke, "--out-dir", str(tmp_path / "levers"), "--micro-batch", "16",
          "--document-chunk", "64", "--pack-documents", "--optim", "adamw_torch_fused")
    bench("train_gpu.py", *smoke, "--out-dir", str(tmp_path))
    bench("collate.py", "--steps", "1", "--out", str(tmp_path))
    bench("study_gpu.py", *smoke, "--out-dir", str(tmp_path))  # projects the study with the training rate above
    for result in (tmp_path / "levers" / "train_gpu.json", tmp_path / "train_gpu.json"):
        [row] = json.loads(result.read_text())["configs"]
        assert row["status"] == "ok" and row["queries_per_s"] > 0 and row["tokens_per_step"]["real_tokens"] > 0, row
    assert row["loss_max_rel_diff_vs_first"] == 0  # the first configuration of its run: its own reference
    collate = json.loads((tmp_path / "train_collate.json").read_text())
    assert collate["rows"] and all(r["seconds_per_step_median"] > 0 for r in collate["rows"]), collate
    study = json.loads((tmp_path / "study_gpu.json").read_text())
    assert study["complete"] and study["training"]["params_yaml"] == pytest.approx(row["queries_per_s"])
    assert all(math.isfinite(s["projected_s"]) and s["projected_s"] > 0 for s in study["stages"]), study["stages"]
    assert study["total_hours"]["with_params_yaml_training"] > study["total_hours"]["without_training"] > 0
    assert "against the 3-hour target" in (tmp_path / "study_gpu.md").read_text()
    # The stages that run no GPU work come from bench/prepare_cpu.py's committed full-size result; the held-out
    # evaluations inside training from the encode rows.
    counted = {s["stage"].split(" (")[0] for s in study["stages"] if s["in_total"]}
    assert {"prepare from a warm cache", "train stage beside its steps: start-up, distillation set, saving",
            "train: held-out evaluations"} <= counted, counted


@pytest.mark.slow
def test_the_prepare_benchmark_runs_the_prepare_and_train_stages_at_smoke_size(tmp_path, study_gpu):
    done = subprocess.run([sys.executable, "bench/prepare_cpu.py", "--scale", "0.001", "--batches", "5",
                           "--out-dir", str(tmp_path), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=bench_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "prepare_cpu.json").read_text())
    first, warm, train, load = result["phases"]
    # The stage's own cost record: the distillation set's documents (those training references) and the BEIR sets'.
    assert warm["stage_cost"]["items"] == first["stage_cost"]["items"] > result["sizes"]["train"]
    assert train["stage_cost"]["items"] == 3 * 16  # the train stage's 3 steps of 16 queries, on the prepared set
    assert result["load"]["batches"] == 5 and result["load"]["s_per_batch"] > 0 and load["peak_rss_mb"] > 0
    assert any((tmp_path / "work" / "datasets").rglob("*.arrow"))  # the hub copy went through datasets' Arrow cache
    # study_gpu.py counts a full-size result only: this one gives a row saying it was not measured.
    projection = {"stages": []}
    study_gpu.add_cpu_stages(projection, tmp_path / "prepare_cpu.json")
    assert [s["in_total"] for s in projection["stages"]] == [False], projection
    (tmp_path / "full.json").write_text(json.dumps({**result, "scale": 1}))
    projection = {"stages": []}
    study_gpu.add_cpu_stages(projection, tmp_path / "full.json")
    assert [s["projected_s"] for s in projection["stages"]] == [warm["wall_s"], train["wall_s"]]


def test_planning_the_held_out_evaluations_leaves_float32_matmuls_in_full_precision(study_gpu, monkeypatch):
    # On an Ampere or newer GPU (tf32: auto) the trainer's arguments, which plan the held-out evaluations, switch
    # TF32 on for the whole process; the retrieval study_gpu.py times after them must keep the pipeline's float32.
    # Stood in for on the CPU: transformers told that TF32 is available, the precision resolved to TF32.
    import torch
    import transformers.training_args

    from colbench import train
    from colbench.config import load_params

    monkeypatch.setattr(transformers.training_args, "is_torch_tf32_available", lambda: True)
    monkeypatch.setattr(train, "resolve_precision", lambda bf16, tf32: (False, True))
    fiqa = {"documents": 57_638, "queries": 648, "measured_documents": 1_000, "measured_queries": 100,
            "documents_s": 11.0, "queries_s": 2.0}
    backends, matmul = torch.backends.fp32_precision, torch.get_float32_matmul_precision()
    try:
        study_gpu.held_out_evaluations(load_params(REPO / "params.yaml"), {"fiqa": fiqa}, 1.0)
        precision = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision,
                     torch.backends.mkldnn.matmul.fp32_precision)
    finally:  # whatever happened, the next test in this process starts from torch's defaults
        torch.backends.fp32_precision = backends
        torch.set_float32_matmul_precision(matmul)
    assert precision[0] == "highest" and "tf32" not in precision, precision


def test_the_study_total_counts_held_out_evaluations_and_cpu_stages_once_and_training_apart(tmp_path, study_gpu):
    from colbench.config import load_params

    fiqa = {"documents": 57_638, "queries": 648, "measured_documents": 1_000, "measured_queries": 100,
            "documents_s": 11.0, "queries_s": 2.0}
    held_out = study_gpu.held_out_evaluations(load_params(REPO / "params.yaml"), {"fiqa": fiqa}, 1.0)
    # 50,546 steps: evaluated at step 0, every 5,000 steps and at the end; 10 ms per document, 10 ms per query.
    assert held_out["study_items"].startswith("12 evaluations")
    assert held_out["projected_s"] == pytest.approx(12 * (0.01 * 56_723 + 0.01 * 649))
    (tmp_path / "prepare_cpu.json").write_text(json.dumps({
        "bench": "prepare_cpu", "complete": True, "scale": 1, "machine": "cpu", "cpus": 2, "date": "today",
        "warm_prepare_s": 100.0, "train_stage_s": 50.0}))
    (tmp_path / "train_gpu.json").write_text(json.dumps({"bench": "train_gpu", "complete": True, "configs": [
        {"name": "params.yaml (4 x 4)", "status": "ok", "queries_per_s": 20.0, "steps_timed": 10},
        {"name": "micro-batch 16", "status": "ok", "queries_per_s": 112.0, "steps_timed": 10}]}))
    result = {"stages": [held_out, {"stage": "encode", "projected_s": 3600.0, "in_total": True},
                         {"stage": "an alternative", "projected_s": 999.0, "in_total": False}]}
    study_gpu.add_cpu_stages(result, tmp_path / "prepare_cpu.json")
    study_gpu.add_training(result, tmp_path / "train_gpu.json")
    other = held_out["projected_s"] + 3600.0 + 150.0
    assert result["total_hours"]["without_training"] == pytest.approx(other / 3600)
    assert result["total_hours"]["with_fastest_training"] == pytest.approx((other + 808_728 / 112) / 3600)
    assert result["total_hours"]["with_params_yaml_training"] == pytest.approx((other + 808_728 / 20) / 3600)
