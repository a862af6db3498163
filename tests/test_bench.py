"""The GPU benchmarks (`bench/gpu.sh`'s two scripts) at smoke size on the CPU.

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
    for script in ("train_gpu.py", "study_gpu.py"):  # the second projects the study with the first's training rate
        done = subprocess.run([sys.executable, f"bench/{script}", "--smoke", "--out-dir", str(tmp_path),
                               "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    training = json.loads((tmp_path / "train_gpu.json").read_text())
    [row] = training["configs"]
    assert row["status"] == "ok" and row["queries_per_s"] > 0 and row["tokens_per_step"]["real_tokens"] > 0, row
    study = json.loads((tmp_path / "study_gpu.json").read_text())
    assert study["complete"] and study["training"]["params_yaml"] == pytest.approx(row["queries_per_s"])
    assert [s["stage"].split(" ")[0] for s in study["stages"]][:1] == ["encode"]
    assert all(math.isfinite(s["projected_s"]) and s["projected_s"] > 0 for s in study["stages"]), study["stages"]
    assert study["total_hours"]["with_params_yaml_training"] > study["total_hours"]["without_training"] > 0
    assert "against the 3-hour target" in (tmp_path / "study_gpu.md").read_text()
