"""What the journey tests share: scratch clones of this working tree and the README's commands run in them, as a
user runs them (offline, with this test run's virtualenv).

The journeys are in two files: `test_journeys_demo.py` (one `make demo` that the demo's journeys share) and
`test_journeys_study.py` (the study's pipeline pointed at local stand-ins for the hub and BEIR downloads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


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


def declared_outputs(repo: Path, pipeline: str) -> list[Path]:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    paths = []
    for spec in stages.values():
        for kind in ("outs", "metrics", "plots"):
            paths += [repo / pipeline / (next(iter(o)) if isinstance(o, dict) else o) for o in spec["do"].get(kind, [])]
    return paths
