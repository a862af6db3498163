"""Where a result came from: code revision, software versions and hardware.

`provenance()` is recorded beside every trained model (and may be recorded by any stage), so that a
number in the report can be traced to the exact code and library versions that produced it.

Contract:
- Never raises: a missing git binary, a folder outside any repository or a library that is not
  installed is recorded as ``None``.
- Deterministic apart from ``recorded_at``: callers that hash provenance (to decide whether two runs
  are comparable) must use `stable_part()`, which leaves the timestamp out.
"""

from __future__ import annotations

import ast
import datetime as _dt
import hashlib
import importlib.metadata
import os
import platform
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from colbench.atomic import read_json

# Distributions whose versions decide the numbers this project produces.
PACKAGES = (
    "torch",
    "transformers",
    "sentence-transformers",
    "datasets",
    "accelerate",
    "voyager",
    "pytrec-eval-terrier",
    "numpy",
    "colbench",
)

# Keys that change from one call to the next even when nothing that matters changed.
VOLATILE_KEYS = ("recorded_at",)
PACKAGE_DIR = Path(__file__).resolve().parent
# Files a module reads at run time (not imported): whatever runs the module depends on them as on its code.
MODULE_DATA_FILES = {"training_curve": ("reference/study_training_loss.csv",)}


def colbench_imports(source: str) -> set[str]:
    """The colbench modules ``source`` imports, at module level or inside functions (``colbench.x`` -> ``x``)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "colbench":
            found |= {a.name for a in node.names} if node.module == "colbench" else {node.module.split(".", 1)[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("colbench.")}
    return found


def import_closure(modules: Iterable[str]) -> set[str]:
    """``modules`` and every colbench module they import, directly or not (names without ``colbench.``)."""
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += colbench_imports((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    return seen


def code_files(modules: Iterable[str]) -> list[str]:
    """The package files (relative to it) that running ``modules`` reads: their import closure's sources and data."""
    closure = import_closure(modules)
    return sorted([f"{m}.py" for m in closure] + [f for m in closure for f in MODULE_DATA_FILES.get(m, ())])


def code_digest(modules: Iterable[str]) -> dict[str, str]:
    """sha256 (16 hex characters) of each file of `code_files(modules)`: what an edit of that code changes."""
    return {name: hashlib.sha256((PACKAGE_DIR / name).read_bytes()).hexdigest()[:16] for name in code_files(modules)}


def _git(repo_dir: Path, *args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(repo_dir), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def git_info(repo_dir: str | Path = ".") -> dict[str, Any]:
    """``{"revision", "dirty"}`` of the repository holding ``repo_dir``; nulls without git or commits."""
    repo_dir = Path(repo_dir)
    revision = _git(repo_dir, "rev-parse", "HEAD")
    status = _git(repo_dir, "status", "--porcelain", "--untracked-files=no") if revision else None
    return {"revision": revision, "dirty": None if status is None else bool(status)}


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution, ``None`` where it is not installed."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict[str, Any]:
    """CPU count and, where CUDA is usable, the GPU names and count."""
    info: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        # The cores this process may use can be fewer than the machine has (containers, taskset).
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "gpu": None,
        "gpu_count": 0,
    }
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu_count"] = torch.cuda.device_count()
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except Exception:  # provenance must never stop a run
        pass
    return info


def provenance(repo_dir: str | Path = ".") -> dict[str, Any]:
    """Everything needed to trace a result back to code, libraries and hardware.

    Keys: ``git`` ({revision, dirty}), ``python``, ``platform``, ``packages`` (name -> version),
    ``hardware`` (cpu_count, gpu, ...), ``recorded_at`` (UTC ISO timestamp; volatile).
    """
    return {
        "git": git_info(repo_dir),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": package_versions(),
        "hardware": hardware(),
        "recorded_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def stable_part(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the volatile keys (timestamps), for hashing or comparing runs."""
    return {key: value for key, value in record.items() if key not in VOLATILE_KEYS}


def run_provenance(params) -> dict[str, Any]:
    """What this run came from: seed, code revision, package versions, data and model revisions."""
    def manifest(folder: Path) -> dict[str, Any]:
        path = folder / "manifest.json"
        return read_json(path) if path.is_file() else {}

    kd = manifest(params.path("kd"))
    model_dir = params.path("model")
    model = read_json(model_dir / "colbench_train.json") if (model_dir / "colbench_train.json").is_file() else {}
    pointer = read_json(model_dir / "checkpoint.json") if (model_dir / "checkpoint.json").is_file() else {}
    record = provenance(params.file.parent.resolve())
    return {
        "seed": {"base": params.base.seed, "train": params.train.seed},
        "git": record.get("git"),
        "packages": record.get("packages"),
        "hardware": record.get("hardware"),
        "distillation_data": {"source": kd.get("source"), "revision": kd.get("revision"), "n_train": kd.get("n_train")},
        "evaluation_data": {name: {k: manifest(params.path("datasets") / name).get(k) for k in ("source", "split", "url")}
                            for name in params.datasets},
        # The hub commit of the checkpoint evaluated, or of the model trained from (null: a local folder).
        "model": ({"checkpoint": pointer["checkpoint"], "revision": pointer.get("revision")} if pointer.get("checkpoint")
                  else {"base_model": model.get("base_model"), "init_checkpoint": model.get("init_checkpoint"),
                        "revision": model.get("model_revision"), "parameter_sha256": model.get("parameter_sha256"),
                        "global_step": model.get("global_step"), "trained_on": _trained_on(model)}),
    }


def _trained_on(train_record: dict[str, Any]) -> dict[str, Any]:
    """Where the model was trained, from its ``colbench_train.json``: the report stage may run on another machine
    (the laptop that reads a GPU box's checkpoint), whose hardware is the record's ``hardware``."""
    recorded = train_record.get("provenance") or {}
    return {"hardware": recorded.get("hardware"), "torch": (recorded.get("packages") or {}).get("torch"),
            "processes": train_record.get("world_size"), "precision": train_record.get("resolved_precision")}
