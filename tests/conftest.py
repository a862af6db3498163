"""Shared test setup: every test runs offline (the hub and BEIR servers are unreachable on CI), and the
fixtures that build KD sets and trainers the way the train stage does."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import itertools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PYLATE = FIXTURES / "pylate"


DEMO_JOURNEYS = "test_journeys_demo.py"


def pytest_collection_modifyitems(items):
    """The demo's journeys last: `make demo`, which they wait for (`demo_build`), builds beside the tests before them.
    Under pytest-xdist (`make test`: two processes, --dist worksteal) the second process's share ends with them, and
    the first, when it runs out, steals the end of that queue: the two processes run the journeys side by side.
    A process never gives up the test queued after the one it runs, so the file puts its longest journey first and
    a short one after it, and the long ones that are left at the end, where the other process steals them (with the
    second-longest queued after the longest, one process stood idle for the run's last 157 s; in this order, 16 s)."""
    items.sort(key=lambda item: item.path.name == DEMO_JOURNEYS)


@pytest.fixture(scope="session", autouse=True)
def demo_build(request, tmp_path_factory):
    """`make demo` for the demo's journeys, when the run has any, started by the first test of the run (journeys.py,
    `DemoBuild`). Under pytest-xdist (`make test`: two processes) the run's processes share the parent of their
    temporary folders."""
    if not any(item.path.name == DEMO_JOURNEYS for item in request.session.items):
        return None
    from journeys import DemoBuild

    shared = tmp_path_factory.getbasetemp()
    build = DemoBuild((shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared) / "demo-build")
    build.start()
    yield_the_cpu_to_the_build()
    return build  # it ends with the test run (DemoBuild.start)


def yield_the_cpu_to_the_build() -> None:
    """The journeys wait for `make demo` and the tests beside it do not, so on CI's two cores the build goes first:
    the build, already started, keeps its priority and this process lowers its own. Where Linux shares the CPU
    between sessions first (autogroup), the build and the notebook kernels run in sessions of their own, and only a
    lower priority for this run's session helps. That is done only where the session is this run's own (its
    process group leads it: `make test`, tests/own_session.sh), never in a terminal's, where it would outlast the
    run."""
    os.nice(10)
    if os.getpgid(0) == os.getsid(0):
        try:
            Path("/proc/self/autogroup").write_text("10")
        except OSError:  # not Linux, or a kernel without autogroup
            pass


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path_factory, monkeypatch):
    """An empty Hugging Face hub cache for every test: what a developer's own cache holds (the study's data, say)
    must not change what a test sees. huggingface_hub reads HF_HUB_CACHE once, at import."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-hub-cache")))


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """``hold(repo_id, {commit: files}, latest, repo_type="dataset")``: a Hugging Face hub cache as `hf download
    [--repo-type dataset] <repo_id> [--revision <commit>]` leaves it (copied to an offline machine), a snapshot per
    commit, refs/main at ``latest`` (None: pinned downloads only); the hub and datasets libraries pointed at it."""
    import datasets.config
    import huggingface_hub.constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))  # empty

    def hold(repo_id: str, snapshots: dict[str, Path], latest: str | None, repo_type: str = "dataset") -> Path:
        repo = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
        for commit, files in snapshots.items():
            shutil.copytree(files, repo / "snapshots" / commit)
        if latest:
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text(latest)
        return repo

    return hold


@pytest.fixture(scope="session")
def study():
    """The study's params (params.yaml as committed), as every stage reads them."""
    from colbench.config import load_params

    return load_params(REPO / "params.yaml")


@pytest.fixture
def edited_params(tmp_path):
    """``make(edit) -> path``: the study's params.yaml with ``edit(data)`` applied to its parsed YAML,
    written to tmp_path/params.yaml."""
    import yaml

    def make(edit) -> Path:
        data = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
        edit(data)
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    return make


@pytest.fixture
def kd_folder(tmp_path):
    """``make(queries, documents, rows) -> folder``: a KD set in the ms-marco-en-bge schema (ids -> texts,
    train rows of query_id / document_ids / scores), prepared by the prepare stage's own code."""
    from colbench.kd import prepare_kd

    def make(queries: dict, documents: dict, rows: list[dict], name: str = "kd") -> Path:
        source = tmp_path / f"{name}_source"
        source.mkdir()
        for table, records in (("queries", [{"query_id": k, "text": v} for k, v in queries.items()]),
                               ("documents", [{"document_id": k, "text": v} for k, v in documents.items()]),
                               ("train", rows)):
            (source / f"{table}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        prepare_kd(str(source), tmp_path / name, revision=None, max_samples=None, seed=42, n_ways_min=1)
        return tmp_path / name

    return make


@pytest.fixture
def study_settings(study):
    """``make(**arg_overrides) -> dict``: the study's train.model / train.loss / train.args as the train stage
    passes them to `colbench.train.train`, in fp32 and logging every step."""

    from colbench.train import stage_settings

    def make(**arg_overrides) -> dict:
        settings = stage_settings(study)
        # Batches tokenised in the test's process, as the study did (params.yaml's workers are a GPU box's speed
        # setting; the trajectory test checks that workers change nothing).
        args = {**settings["args"], "bf16": False, "tf32": False, "logging_steps": 1, "save_steps": 1000,
                "dataloader_num_workers": 0, **arg_overrides}
        return dict(model_kwargs=settings["model_kwargs"], loss_kwargs=settings["loss_kwargs"], args=args)

    return make


@pytest.fixture
def reference_trainer(tmp_path, kd_folder, study_settings):
    """``make(arch, **loss_overrides) -> (trainer, run, reference)``: the train stage's trainer
    (`colbench.train.build_trainer`, study settings) starting from PyLate's checkpoint of ``arch``, on
    PyLate's fixed KD batch (reference.json ``kd_batch``)."""
    from colbench.train import build_trainer

    calls = itertools.count()

    def make(arch: str, **loss_overrides):
        run_dir = tmp_path / f"trainer-{next(calls)}"
        reference = json.loads((PYLATE / arch / "reference.json").read_text(encoding="utf-8"))
        batch = reference["kd_batch"]
        documents = {f"d{i}-{j}": text for i, row in enumerate(batch) for j, text in enumerate(row["documents"])}
        rows = [{"query_id": f"q{i}", "document_ids": [f"d{i}-{j}" for j in range(len(row["documents"]))],
                 "scores": row["scores"]} for i, row in enumerate(batch)]
        folder = kd_folder({f"q{i}": row["query"] for i, row in enumerate(batch)}, documents, rows, name=run_dir.name)
        settings = study_settings()
        settings["loss_kwargs"].update(n_ways=len(batch[0]["documents"]), **loss_overrides)
        trainer, run = build_trainer(kd_dir=folder, checkpoints_dir=run_dir / "checkpoints",
                                     log_path=run_dir / "log.json", base_model="unused",
                                     init_checkpoint=str(PYLATE / arch / "pylate-colbert"), seed=42, **settings)
        return trainer, run, reference

    return make


@pytest.fixture
def beir_server(tmp_path, monkeypatch):
    """A loopback HTTP server standing for BEIR's download server: it serves the files put in the folder it yields
    (``<name>.zip``), `colbench.hub.BEIR_URL` points at it, and ``paths`` lists the paths asked for."""
    import http.server
    import threading

    from colbench import hub

    served, paths = tmp_path / "served", []
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(served), **kwargs)

        def do_GET(self):
            paths.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(hub, "BEIR_URL", f"http://127.0.0.1:{server.server_address[1]}/{{name}}.zip")
    monkeypatch.setenv("COLBENCH_BEIR_CACHE", str(tmp_path / "cache"))
    yield served, paths
    server.shutdown()
    server.server_close()
