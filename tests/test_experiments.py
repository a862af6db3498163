import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from colbench.errors import InputError
from colbench.experiments import (
    experiments_table,
    load_experiments,
    save_experiments,
    scope_entries,
    table_from_file,
)
from colbench.figures import plot_ablation

DVC = str(Path(sys.executable).with_name("dvc"))

STAGE = """\
import json, os, yaml
p = yaml.safe_load(open("params.yaml"))
os.makedirs("reports/metrics", exist_ok=True)
os.makedirs("reports/per_query", exist_ok=True)
scale = p["train"]["scale"]
for name, base in (("scifact", 0.1), ("fiqa", 0.2)):
    json.dump({"ndcg@10": base * scale, "recall@100": 0.9}, open(f"reports/metrics/{name}.json", "w"))
    json.dump({"q1": {"ndcg@10": base * scale}, "q2": {"ndcg@10": 0.0}}, open(f"reports/per_query/{name}.json", "w"))
"""


@pytest.fixture
def dvc_repo(tmp_path, monkeypatch):
    for key, value in {"DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
                       "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}.items():
        monkeypatch.setenv(key, value)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("prepare:\n  datasets: {scifact: {}, fiqa: {}}\ntrain:\n  scale: 1\n"
                                      "evaluate:\n  k_values: [1, 10]\n")
    (repo / "stage.py").write_text(STAGE)
    (repo / "dvc.yaml").write_text(textwrap.dedent(f"""\
        stages:
          evaluate:
            cmd: {sys.executable} stage.py
            deps: [stage.py]
            params: [prepare, train, evaluate]
            outs: [reports/per_query]
            metrics:
              - reports/metrics/scifact.json: {{cache: false}}
              - reports/metrics/fiqa.json: {{cache: false}}
        """))

    def sh(*cmd):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env=os.environ)

    sh("git", "init", "-q")
    sh(DVC, "init", "-q")
    sh(DVC, "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "study")
    sh(DVC, "exp", "run", "-q", "-S", "train.scale=2", "-n", "double")
    sh(DVC, "exp", "run", "-q", "-S", "train.scale=3", "-n", "triple")
    return repo


def test_load_experiments_lists_baseline_and_experiments(dvc_repo, tmp_path, monkeypatch):
    df = load_experiments(dvc_repo, DVC)
    assert list(df["role"]) == ["baseline", "experiment", "experiment"]
    assert list(df["same_as_baseline"]) == [True, False, False]
    assert list(df["experiment"][1:]) == ["double", "triple"]
    # Only the param that differs becomes a column; evaluate.k_values does not.
    assert df.attrs["params"] == ["train.scale"]
    assert list(df["train.scale"]) == [1, 2, 3]
    assert df["ndcg@10/scifact"].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert df["ndcg@10/fiqa"].tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert "recall@100/fiqa" not in df.columns

    workspace = load_experiments(dvc_repo, DVC, include_workspace=True, metrics=("ndcg@10", "recall@100"))
    assert workspace["role"].tolist().count("workspace") == 1
    assert workspace["recall@100/fiqa"].tolist() == pytest.approx([0.9] * 4)

    # The report reads a snapshot: the same table. Written from a subfolder (make runs it from the demo's).
    monkeypatch.chdir(dvc_repo / "reports")
    path = save_experiments(dvc_repo, tmp_path / "experiments.json")
    snapshot = table_from_file(path)
    assert snapshot["ndcg@10/fiqa"].tolist() == df["ndcg@10/fiqa"].tolist()
    # ... with each experiment's per-query values, read from the DVC cache at its revision.
    per_query = snapshot.attrs["per_query"]
    assert per_query["triple"]["fiqa"] == pytest.approx({"q1": 0.6, "q2": 0.0})
    assert per_query["double"]["scifact"] == pytest.approx({"q1": 0.2, "q2": 0.0})
    workspace_entry = json.loads(path.read_text())[0]  # the workspace's, read from its files: the last `exp run`
    assert workspace_entry["rev"] == "workspace"
    assert workspace_entry["data"]["per_query"]["fiqa"] == pytest.approx({"q1": 0.6, "q2": 0.0})

    png = plot_ablation(df, tmp_path / "ablation.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A metric no experiment has: the figure says so instead of failing the report stage.
    assert plot_ablation(df, tmp_path / "x.png", metric="map@100").stat().st_size > 1000


def test_load_experiments_rejects_a_folder_without_dvc(tmp_path):
    with pytest.raises(InputError, match="not a DVC repository"):
        load_experiments(tmp_path, DVC)


def test_a_snapshot_keeps_only_its_own_pipelines_params_and_metrics():
    # `dvc exp show` lists every pipeline of the repository: the study at the root and the demo below it.
    def data(scale):
        return {"params": {"params.yaml": {"data": {"train": {"lr": 1}}},
                           "demo/params.yaml": {"data": {"train": {"lr": scale}}}},
                "metrics": {"reports/metrics/evaluate.json": {"data": {"fiqa": {"ndcg@10": 0.4}}},
                            "demo/reports/metrics/evaluate.json": {"data": {"pydocs": {"ndcg@10": 0.5 * scale}}}}}

    entries = [{"rev": "abc1234", "name": "main", "data": data(1),
                "experiments": [{"name": "double", "revs": [{"rev": "def5678", "name": "double", "data": data(2)}]}]}]
    demo = experiments_table(scope_entries(entries, "demo"))
    assert demo.attrs["params"] == ["train.lr"] and demo["train.lr"].tolist() == [1, 2]
    assert demo.attrs["metrics"] == ["ndcg@10/pydocs"] and demo["ndcg@10/pydocs"].tolist() == [0.5, 1.0]
    study = experiments_table(scope_entries(entries, "", others=["demo"]), all_params=True)
    assert study.attrs["params"] == ["train.lr"] and study.attrs["metrics"] == ["ndcg@10/fiqa"]
