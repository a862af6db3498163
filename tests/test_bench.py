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

pytestmark = pytest.mark.slow


def test_the_gpu_benchmarks_measure_training_and_project_the_study_at_smoke_size(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))

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


def test_the_prepare_benchmark_runs_the_prepare_and_train_stages_at_smoke_size(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, "bench/prepare_cpu.py", "--scale", "0.001", "--batches", "5",
                           "--out-dir", str(tmp_path), "--work", str(tmp_path / "work")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "prepare_cpu.json").read_text())
    first, warm, train, load = result["phases"]
    # The stage's own cost record: the distillation set's documents (those training references) and the BEIR sets'.
    assert warm["stage_cost"]["items"] == first["stage_cost"]["items"] > result["sizes"]["train"]
    assert train["stage_cost"]["items"] == 3 * 16  # the train stage's 3 steps of 16 queries, on the prepared set
    assert load["wall_s"] > 0 and result["load"]["batches"] == 5 and result["load"]["s_per_batch"] > 0
    assert (tmp_path / "work" / "datasets").is_dir()  # the first run went through datasets' Arrow cache
