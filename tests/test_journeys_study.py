"""The README's commands on the study's pipeline, run as a user runs them in scratch clones of this working tree,
offline: without the network it stops before computing anything; pointed at a local checkpoint (in the published
checkpoint's format) and local BEIR folders it evaluates them. Each test names the README section whose commands
it runs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from journeys import clone_of_this_tree, declared_outputs, read, run, stale_stages

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A clone whose study pipeline runs offline: a local BEIR folder (with ids that collide as FiQA's and ArguAna's
    do) stands for the downloads, and a local checkpoint in the published checkpoint's format (PyLate 1.1.4) for
    the hub id; every other setting as committed (the distillation set stays the hub's)."""
    repo = clone_of_this_tree(tmp_path_factory.mktemp("study-clone"))

    def local(data):
        data["prepare"]["datasets"] = {"colliding": {"source": str(repo / "tests/fixtures/beir_colliding"),
                                                     "split": "test"}}
        data["evaluate"]["ignore_identical_ids"] = {"colliding": False}
        data["train"]["checkpoint"] = str(repo / CHECKPOINT)

    edit_params(repo, local)
    run("git -c user.name=t -c user.email=t@example.com commit -qam 'local stand-ins'", repo)
    return repo


CHECKPOINT = "tests/fixtures/pylate/modernbert/pylate114-colbert"


def edit_params(repo: Path, edit) -> None:
    path = repo / "params.yaml"
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_make_study_offline_says_what_is_missing_and_computes_nothing(tmp_path, monkeypatch):
    # README, "Run the full study", on a machine without the network, params.yaml as committed.
    repo = clone_of_this_tree(tmp_path / "clone")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty Hugging Face cache
    monkeypatch.setenv("COLBENCH_BEIR_CACHE", str(tmp_path / "beir"))
    done = run("make study", repo, check=False)
    assert done.returncode != 0
    for resource in ("prepare.kd.source = lightonai/ms-marco-en-bge", "train.base_model = answerdotai/ModernBERT-base",
                     "prepare.datasets.fiqa.source = fiqa", "prepare.datasets.arguana.source = arguana"):
        assert resource in done.stderr, done.stderr
    assert "Nothing was computed" in done.stderr
    assert not (repo / "data").exists() and not (repo / "reports" / "metrics").exists()


def test_evaluating_an_existing_checkpoint_needs_no_distillation_data(study):
    # README, "Evaluate an existing checkpoint": its `dvc exp run -S train.checkpoint=...`, the local checkpoint
    # standing for the hub id.
    checkpoint = study / CHECKPOINT
    run(f"dvc exp run -S 'train.checkpoint={checkpoint}' report@study", study)
    assert read(study / "data/kd/manifest.json")["skipped"].startswith("train.checkpoint is")
    missing = [str(p.relative_to(study)) for p in declared_outputs(study, ".") if not p.exists()]
    assert not missing, f"declared but not produced: {missing}"
    metrics = read(study / "reports/metrics/evaluate.json")["colliding"]
    assert metrics["identical_ids"] == "kept" and metrics["self_hits"] > 0  # numeric ids collide, as in FiQA
    assert metrics["other_protocol"]["identical_ids"] == "dropped"
    index = (study / "reports" / "README.md").read_text()
    assert f"**Evaluated checkpoint**: `{checkpoint}`" in index  # the report says which checkpoint it evaluated
    assert "other_ndcg@10" in index and "self_hits" in index  # both protocols, and what dropping removes
    assert stale_stages(study, "report@study") == set()


def test_adding_a_dataset_evaluates_it_beside_the_others(study):
    # README, "Add a dataset": one entry under prepare.datasets and one under evaluate.ignore_identical_ids.
    def add(data):
        data["prepare"]["datasets"]["tiny"] = {"source": str(study / "tests/fixtures/beir_tiny"), "split": "test"}
        data["evaluate"]["ignore_identical_ids"]["tiny"] = False

    edit_params(study, add)
    run("make study", study)
    metrics = read(study / "reports/metrics/evaluate.json")
    assert set(metrics) == {"colliding", "tiny"} and metrics["tiny"]["queries"] == 3
    assert "| tiny |" in (study / "reports" / "README.md").read_text()


def test_an_experiment_of_the_study_shows_in_dvc_exp_show(study):
    # README, "Ablations": an experiment of the study pipeline (here of the checkpoint evaluation above).
    run("dvc exp run --temp -n no-normalize -S train.loss.normalize_scores=false report@study", study)
    diff = run("dvc exp diff HEAD no-normalize", study).stdout
    assert re.search(r"train\.loss\.normalize_scores\s+True\s+False", diff), diff
    shown = run("dvc exp show --only-changed", study).stdout  # without a pager, cut to the terminal's width
    names = run("dvc exp list --name-only", study).stdout.split()
    assert names and all(f"[{name}]" in shown for name in names), shown  # a row per experiment
