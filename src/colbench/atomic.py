"""Atomic outputs: write to a temporary sibling, then rename into place; checksummed folders.

An interrupted stage must never leave a partial output that DVC or the next stage mistakes for a
complete one. A rename within one filesystem is atomic, so readers see either the old output or the
new one, never half of it. A prepared data folder carries a ``manifest.json`` with the sha256 of every
file (`write_manifest`), which the prepare stage checks again once the folder is in place
(`verify_manifest`); later edits are DVC's to detect (it hashes every output).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from colbench.errors import InputError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkdtemp and mkstemp create owner-only entries (0700 / 0600); an output gets the permissions an ordinary
# mkdir or open would have given it, so that outputs shared through a DVC cache or a group folder stay readable.
_UMASK = _current_umask()
DIR_MODE, FILE_MODE = 0o777 & ~_UMASK, 0o666 & ~_UMASK


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``path`` only if the block completes.

    On an exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, DIR_MODE)
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(old)  # left by a run killed here with the same process id (containers reuse them)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[Any]:
    """Open a temporary sibling of ``path`` for writing; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, **open_kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=False, default=_jsonable)
        handle.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically."""
    with atomic_file(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder`` but its manifest, by posix path relative to it."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in files}


def write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write ``folder/manifest.json``: ``manifest`` plus the checksums of the folder's files; returns it."""
    manifest = {**manifest, "sha256": checksums(folder)}
    # Plain write: the folder itself is still the temporary one of atomic_dir.
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def verify_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a prepared folder, after checking every file it lists against its sha256."""
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise InputError(f"{manifest_path} is missing: the folder was not written by the prepare stage; rerun it")
    manifest = read_json(manifest_path)
    for rel, expected in manifest.get("sha256", {}).items():
        path = folder / rel
        if not path.is_file():
            raise InputError(f"{path} is listed in {manifest_path} but missing; rerun the prepare stage")
        if sha256_file(path) != expected:
            raise InputError(f"{path} does not match its sha256 in {manifest_path} (edited?); rerun the prepare stage")
    return manifest


def write_png(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as a 120-dpi PNG at ``path`` (atomically) and close it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    with atomic_file(path, "wb") as handle:
        handle.write(buffer.getvalue())
    return Path(path)


def _jsonable(value: Any) -> Any:
    # numpy scalars and paths show up in metrics and manifests.
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
