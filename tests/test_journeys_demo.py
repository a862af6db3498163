"""The README's commands on the demo, run as a user runs them in a scratch clone of this working tree, offline.

One clone runs `make demo`, beside the other tests of the run (conftest.py, `demo_build`); each journey that builds on
a finished demo works on its own copy of that clone: change a module and see which stages are stale, experiments in
the report, outputs through a DVC remote, a killed run that resumes to the same result. Each test names the README
section whose commands it runs. Their order is for `make test` (conftest.py): the longest first, then the others
from the shortest to the longest.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import yaml

from journeys import declared_outputs, environment, read, run, stale_stages

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(demo_build, tmp_path):
    """README, top: `make demo` in a fresh clone; this test's own copy of it."""
    seconds = demo_build.finished()["seconds"]
    repo = tmp_path / "demo-clone"
    shutil.copytree(demo_build.repo, repo, symlinks=True)
    folder = repo / "demo"
    yield {"repo": repo, "seconds": seconds,
           "metrics": read(folder / "reports/metrics/evaluate.json"),
           "training": read(folder / "reports/metrics/train.json"),
           "weights": read(folder / "models/colbert/colbench_train.json")["parameter_sha256"]}
    shutil.rmtree(repo)  # nearly a gigabyte per journey


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


def test_make_demo_writes_the_report_and_training_helps(demo):
    repo = demo["repo"]
    missing = [str(p.relative_to(repo)) for p in declared_outputs(repo, "demo") if not p.exists()]
    assert not missing, f"declared but not produced: {missing}"
    reports = repo / "demo" / "reports"
    for stage in ("01_prepare", "02_train", "03_encode", "04_index", "05_retrieve", "06_evaluate", "07_report"):
        assert (reports / "html" / f"{stage}.html").stat().st_size > 10_000
        # The executed notebooks are the report: no progress bars, no trainer log printed line by line.
        shown = json.dumps(read(reports / "notebooks" / f"{stage}.ipynb")["cells"])
        assert not re.search(r"<progress|it/s\]|IProgress|\{'loss': ", shown), stage
    train = read(reports / "metrics" / "train.json")
    assert demo["metrics"]["pydocs"]["ndcg@10"] > train["heldout_start_ndcg@10"] + 0.01, (train, demo["metrics"])
    # The number the README publishes (demo/params.yaml's reference, 61.62). On another CPU the rounding of the
    # 25 training steps may differ a little; a broken recipe costs several points (seeds alone move 1.6).
    reference = yaml.safe_load((repo / "demo" / "params.yaml").read_text())["report"]["reference_ndcg10"]["pydocs"]
    assert 100 * demo["metrics"]["pydocs"]["ndcg@10"] == pytest.approx(reference, abs=1.0), demo["metrics"]
    index = (reports / "README.md").read_text()
    assert "**reproduced**: the demo reference value 61.62 lies inside the interval" in index, index[:2000]
    trained_on = read(repo / "demo/models/colbert/colbench_train.json")["provenance"]  # the train stage's machine
    assert (f"for 25 steps on {trained_on['hardware']['cpu_affinity']} CPU cores (1 process, fp32, torch "
            f"{trained_on['packages']['torch']})") in index, index[:500]
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


def test_make_ablation_adds_the_experiment_to_the_report(demo):
    # README, "Ablations": `make ablation` with another setting than its default pair (a cheap one: retrieval only).
    repo = demo["repo"]
    run("make ablation ABLATIONS=retrieve.ef_search=128", repo)
    index = (repo / "demo" / "reports" / "README.md").read_text()
    ablations = index.split("## Ablations", 1)[1].split("\n## ", 1)[0]
    assert "retrieve.ef_search" in ablations
    experiments = [line for line in ablations.splitlines() if re.match(r"\| [\w-]+ \| experiment \|", line)]
    assert any(re.search(r"\| 128 \|", line) for line in experiments), ablations


def forget_cached_outputs(repo, stage: str) -> None:
    """As after a run of `stage` that never ended: DVC's cache lacks its outputs (a file's object, a directory's
    manifest) and the run cache is empty, so `dvc repro` has to run the stage."""
    for out in yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"]:
        (repo / ".dvc/cache/files/md5" / out["md5"][:2] / out["md5"][2:]).unlink()
    shutil.rmtree(repo / ".dvc/cache/runs")


def test_a_killed_demo_resumes_from_its_checkpoint_and_ends_identical(demo):
    # README, "Run the full study": a killed run resumes from its last complete checkpoint. The demo's run left
    # checkpoints at steps 20 and 25 (of 25): without the last one and the final model, `dvc repro` trains steps 21
    # to 25 again, and is killed (SIGKILL to the whole pipeline: dvc, papermill, the kernel) in the middle of them.
    # Rerun, it resumes from step 20 and ends with the uninterrupted run's weights and held-out metrics, which the
    # stage computes with the pipeline's own encode, index, search and scoring. (tests/test_train.py kills a
    # training that started from scratch in the middle of a step and compares the two runs bit for bit.)
    repo, folder = demo["repo"], demo["repo"] / "demo"
    baseline_runs = {path.name: path.read_bytes() for path in (folder / "reports/train/baseline_runs").glob("*.trec")}
    assert baseline_runs  # the untrained model's runs: the report's per-query baseline
    for later in (folder / "models/checkpoints").glob("checkpoint-*"):
        if int(later.name.split("-")[1]) > 20:
            shutil.rmtree(later)
    shutil.rmtree(folder / "models/colbert")
    log = folder / "reports/train/log.json"
    log.unlink()
    forget_cached_outputs(repo, "train@demo")  # DVC has nothing to restore: the stage has to run, and only it

    def trained_past_step_20() -> bool:
        try:
            return max(record["step"] for record in read(log)["records"]) > 20
        except (OSError, ValueError, KeyError):
            return False

    process = subprocess.Popen(["dvc", "repro", "train@demo"], cwd=repo, env=environment(repo), start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while not trained_past_step_20() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert trained_past_step_20(), "the rerun logged no training step after the checkpoint before the pipeline ended"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (folder / "models/colbert/colbench_train.json").exists()

    run("dvc repro train@demo", repo)
    record = read(folder / "models/colbert/colbench_train.json")
    assert record["resumed_from_step"] == 20
    assert record["parameter_sha256"] == demo["weights"]
    resumed = read(folder / "reports/metrics/train.json")
    run_only = ("resumed_from_step", "queries_this_run")  # what this run did, not what it ended with
    assert {k: v for k, v in resumed.items() if k not in run_only} == \
        {k: v for k, v in demo["training"].items() if k not in run_only}
    assert (resumed["queries_this_run"], demo["training"]["queries_this_run"]) == (5 * 16, 400)  # steps 21-25
    # DVC removed the stage's outputs before each rerun, and the resumed run has no step 0: the baseline runs are
    # published again from the checkpoints folder, unchanged.
    assert {path.name: path.read_bytes() for path in (folder / "reports/train/baseline_runs").glob("*.trec")} == \
        baseline_runs
