"""The README's commands, run as a user runs them, in scratch clones of this working tree, offline.

One clone runs the demo once (`make demo`); the journeys that build on a finished demo share that run: change a
module and see which stages are stale, an ablation in the report, a killed run that resumes to the same result,
outputs through a DVC remote. A second clone is the study's pipeline: offline it stops before computing anything;
pointed at a local checkpoint (in the published checkpoint's format) and local BEIR folders it evaluates them.
Each test names the README section whose commands it runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent
pytestmark = pytest.mark.slow


def environment(repo: Path) -> dict[str, str]:
    """This test's virtualenv first on PATH, and the clone's own package first on the import path (the
    virtualenv's editable install points at the working tree the clone was made from)."""
    return {**os.environ, "PYTHONUNBUFFERED": "1",
            "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")]))}


def run(cmd: str, cwd: Path, *, check: bool = True, timeout: int = 3600) -> subprocess.CompletedProcess:
    """A shell command as typed in the README (make targets use this test's virtualenv, never reinstalling)."""
    env = environment(cwd)
    if cmd.startswith("make "):
        cmd = f"make VENV={VENV} -o {VENV}/.installed {cmd[5:]}"
    done = subprocess.run(cmd, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert done.returncode == 0, f"{cmd} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done


def clone_of_this_tree(target: Path) -> Path:
    """A fresh clone: the tracked files and the untracked ones git does not ignore, committed."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, target / name)
    run("git init -q && git add -A && git -c user.name=t -c user.email=t@example.com commit -qm clone", target)
    return target


def read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def stale_stages(repo: Path, target: str) -> set[str]:
    """Stages up to `target` that `dvc status` reports as changed because of their code or data dependencies."""
    status = json.loads(run(f"dvc status --json --with-deps {target}", repo).stdout or "{}")
    return {stage for stage, changes in status.items()
            if any(isinstance(c, dict) and "changed deps" in c for c in changes)}


# ------------------------------------------------------------------------------------------------ the demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """README, top: `make demo` in a fresh clone."""
    repo = clone_of_this_tree(tmp_path_factory.mktemp("demo-clone"))
    started = time.perf_counter()
    run("make demo", repo)
    folder = repo / "demo"
    return {"repo": repo, "seconds": time.perf_counter() - started,
            "metrics": read(folder / "reports/metrics/evaluate.json"),
            "weights": read(folder / "models/colbert/colbench_train.json")["parameter_sha256"]}


def declared_outputs(repo: Path, pipeline: str) -> list[Path]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for spec in stages.values():
        for kind in ("outs", "metrics", "plots"):
            paths += [repo / pipeline / (next(iter(o)) if isinstance(o, dict) else o) for o in spec["do"].get(kind, [])]
    return paths


def test_make_demo_writes_the_report_and_training_helps(demo):
    repo = demo["repo"]
    missing = [str(p.relative_to(repo)) for p in declared_outputs(repo, "demo") if not p.exists()]
    assert not missing, f"declared but not produced: {missing}"
    reports = repo / "demo" / "reports"
    for stage in ("01_prepare", "02_train", "03_encode", "04_index", "05_retrieve", "06_evaluate", "07_report"):
        assert (reports / "html" / f"{stage}.html").stat().st_size > 10_000
    assert "pydocs" in (reports / "README.md").read_text()
    train = read(reports / "metrics" / "train.json")
    assert demo["metrics"]["pydocs"]["ndcg@10"] > train["heldout_start_ndcg@10"] + 0.01, (train, demo["metrics"])
    print(f"make demo: {demo['seconds']:.0f} s")


@pytest.mark.parametrize(("module", "stale"), [
    ("figures", {"report@demo"}),  # editing the report's figures does not retrain
    ("index", {"train@demo", "index@demo", "retrieve@demo"}),  # the held-out evaluation searches through retrieve
    ("evaluate", {"train@demo", "retrieve@demo", "evaluate@demo", "report@demo"}),
])
def test_editing_a_module_makes_exactly_the_stages_that_import_it_stale(demo, module, stale):
    repo = demo["repo"]
    source = repo / "src" / "colbench" / f"{module}.py"
    original = source.read_text()
    assert stale_stages(repo, "report@demo") == set()  # the finished demo is up to date
    try:
        source.write_text(original + "\n# an edit\n")
        assert stale_stages(repo, "report@demo") == stale
    finally:
        source.write_text(original)


def test_make_ablation_adds_the_experiment_to_the_report(demo):
    # README, "Ablations": `make ablation` with another setting than its default pair (a cheap one: retrieval only).
    repo = demo["repo"]
    run("make ablation ABLATIONS=retrieve.ef_search=16", repo)
    index = (repo / "demo" / "reports" / "README.md").read_text()
    ablations = index.split("## Ablations", 1)[1].split("\n## ", 1)[0]
    assert "retrieve.ef_search" in ablations
    experiments = [line for line in ablations.splitlines() if re.match(r"\| [\w-]+ \| experiment \|", line)]
    assert any(re.search(r"\| 16 \|", line) for line in experiments), ablations


def test_make_seeds_and_make_encoders_feed_the_report(demo):
    # README, "Seeds and encoders", at toy scale: the tiny random BERT of the tests trains in seconds. `make encoders`
    # runs it with the demo's seed, `make seeds` once more with seed 7: a seed group of two, and an encoder
    # comparison against the demo's MiniLM run.
    repo, tiny = demo["repo"], "../tests/fixtures/pylate/bert/base"
    run(f"make encoders ENCODERS={tiny}", repo)
    run(f"make seeds SEEDS=7 EXP_FLAGS='-S demo/params.yaml:train.base_model={tiny}'", repo)
    reports = repo / "demo" / "reports"
    seeds = (reports / "seeds.csv").read_text().splitlines()
    assert len(seeds) == 2 and seeds[1].startswith("pydocs,2,"), seeds  # one group, one dataset, two seeds
    encoders = (reports / "encoders.csv").read_text()
    assert tiny in encoders
    index = (reports / "README.md").read_text()
    assert "## Seed variance" in index and "## Encoders" in index
    assert (reports / "figures" / "seeds.png").stat().st_size > 10_000


def test_outputs_round_trip_through_a_dvc_remote(demo, tmp_path):
    # README, "Sharing artifacts".
    repo = demo["repo"]
    index = repo / "demo/data/indexes/pydocs/manifest.json"
    before = index.read_bytes()
    run(f"dvc remote add --local -d storage {tmp_path / 'remote'} && dvc push", repo)
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "demo" / "data")
    shutil.rmtree(repo / "demo" / "models" / "colbert")
    run("dvc pull --with-deps report@demo", repo)
    assert index.read_bytes() == before
    assert (repo / "demo/models/colbert/model.safetensors").is_file()
    assert stale_stages(repo, "report@demo") == set()


def test_a_killed_demo_resumes_from_its_checkpoint_and_ends_identical(demo):
    # README, "Run the full study": a killed run resumes from its last checkpoint (here the demo's training).
    repo, folder = demo["repo"], demo["repo"] / "demo"
    for output in ("models", "reports/metrics", "reports/costs", "data/embeddings", "data/indexes", "data/runs"):
        shutil.rmtree(folder / output, ignore_errors=True)
    shutil.rmtree(repo / ".dvc" / "cache")  # as on a first run: DVC has no cached outputs to restore, it trains
    process = subprocess.Popen(["dvc", "repro", "report@demo"], cwd=repo, env=environment(repo), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = folder / "models/checkpoints/checkpoint-20/colbench_complete.json"  # of 25 steps: little to redo
    deadline = time.monotonic() + 1800
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert marker.exists(), "training wrote no checkpoint before the pipeline ended"
    os.killpg(process.pid, signal.SIGKILL)  # the whole pipeline: dvc, papermill, the kernel
    process.wait()
    assert not (folder / "models/colbert/colbench_train.json").exists()

    run("make demo", repo)
    record = read(folder / "models/colbert/colbench_train.json")
    assert record["resumed_from_step"] >= 20
    assert record["parameter_sha256"] == demo["weights"]
    assert read(folder / "reports/metrics/evaluate.json") == demo["metrics"]


# ----------------------------------------------------------------------------------------------- the study
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
    run("dvc exp run -S train.loss.normalize_scores=false report@study", study)
    diff = run("dvc exp diff", study).stdout
    assert re.search(r"train\.loss\.normalize_scores\s+True\s+False", diff), diff
    shown = run("dvc exp show --only-changed", study).stdout  # without a pager, cut to the terminal's width
    names = run("dvc exp list --name-only", study).stdout.split()
    assert names and all(f"[{name}]" in shown for name in names), shown  # a row per experiment
