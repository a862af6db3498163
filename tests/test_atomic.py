"""Outputs are replaced whole or not at all, and readable as an ordinary write would have left them."""

import os
import stat

import pytest

from colbench.atomic import atomic_dir, write_json


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_outputs_get_the_permissions_of_an_ordinary_write(tmp_path):
    # mkstemp / mkdtemp make owner-only entries: an output shared through DVC's cache or a group folder must not be.
    write_json(tmp_path / "metrics.json", {"ndcg@10": 0.5})
    with atomic_dir(tmp_path / "store") as folder:
        (folder / "part.npy").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "metrics.json").stat().st_mode) == 0o666 & ~umask()
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o777 & ~umask()


def test_a_folder_is_replaced_whole_or_left_as_it_was(tmp_path):
    target = tmp_path / "index"
    with atomic_dir(target) as folder:
        (folder / "a").write_text("first")
    with pytest.raises(RuntimeError), atomic_dir(target) as folder:
        (folder / "a").write_text("half")
        raise RuntimeError("killed half way")
    assert (target / "a").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    # A run killed between the two renames leaves `.index.old-<pid>`; a later run with that process id goes on.
    (tmp_path / f".index.old-{os.getpid()}").mkdir()
    (tmp_path / f".index.old-{os.getpid()}" / "a").write_text("stale")
    with atomic_dir(target) as folder:
        (folder / "a").write_text("second")
    assert (target / "a").read_text() == "second" and sorted(p.name for p in tmp_path.iterdir()) == ["index"]

