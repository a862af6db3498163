"""provenance(): traceable, never failing, stable apart from its timestamp."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import torch

from colbench.provenance import package_versions, provenance, stable_part

HAS_GIT = shutil.which("git") is not None


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-C", str(repo), *args],
        check=True,
        capture_output=True,
    )


def test_outside_a_repository_records_null_git(tmp_path):
    record = provenance(tmp_path)
    assert record["git"] == {"revision": None, "dirty": None}


def test_without_git_binary_records_null_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git on PATH
    record = provenance(tmp_path)
    assert record["git"] == {"revision": None, "dirty": None}
    assert record["packages"]["torch"] == torch.__version__


@pytest.mark.skipif(not HAS_GIT, reason="git not installed")
def test_records_revision_and_dirty_state(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    clean = provenance(tmp_path / ".")
    assert clean["git"] == {"revision": head, "dirty": False}

    (tmp_path / "a.txt").write_text("two\n")
    assert provenance(tmp_path)["git"] == {"revision": head, "dirty": True}


def test_versions_and_hardware_match_this_machine(tmp_path):
    record = provenance(tmp_path)
    assert record["packages"]["torch"] == torch.__version__
    assert record["packages"]["colbench"] is not None
    assert record["hardware"]["cpu_count"] == os.cpu_count()
    assert (record["hardware"]["gpu"] is None) == (not torch.cuda.is_available())


def test_missing_package_is_null_not_an_error():
    assert package_versions(("torch", "surely-not-installed-colbench-xyz")) == {
        "torch": torch.__version__,
        "surely-not-installed-colbench-xyz": None,
    }


def test_stable_part_is_equal_across_calls(tmp_path):
    first, second = provenance(tmp_path), provenance(tmp_path)
    assert "recorded_at" in first and "recorded_at" not in stable_part(first)
    assert stable_part(first) == {key: value for key, value in first.items() if key != "recorded_at"}
    assert stable_part(first) == stable_part(second)
