"""What the journey tests share: scratch clones of this working tree and the README's commands run in them, as a
user runs them (offline, with this test run's virtualenv).

The journeys are in two files: `test_journeys_demo.py` (one `make demo` that the demo's journeys share: `DemoBuild`)
and `test_journeys_study.py` (the study's pipeline pointed at local stand-ins for the hub and BEIR downloads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
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


def as_typed(cmd: str) -> str:
    """A shell command as typed in the README; make targets use this test's virtualenv, never reinstalling."""
    return f"make VENV={VENV} -o {VENV}/.installed {cmd[5:]}" if cmd.startswith("make ") else cmd


def run(cmd: str, cwd: Path, *, check: bool = True, timeout: int = 3600) -> subprocess.CompletedProcess:
    """A README command (`as_typed`), run to its end."""
    done = subprocess.run(as_typed(cmd), shell=True, cwd=cwd, env=environment(cwd), capture_output=True, text=True,
                          timeout=timeout)
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


class DemoBuild:
    """`make demo` in a scratch clone, once per test run, in the background (conftest.py, `demo_build`): the first
    process of the run to `start` it (a pytest-xdist worker, or pytest alone) launches it, and the demo's journeys
    wait for it in `finished`, in whichever process they run; each then works on a copy of the finished clone, so
    none sees what another changed. One deadline for the whole run, counted from the start."""

    TIMEOUT = 3600

    def __init__(self, folder: Path, command: str = "make demo"):
        self.folder, self.repo, self.process, self.command = folder, folder / "clone", None, command
        self.started, self.log, self.result = folder / "started", folder / "make-demo.log", folder / "make-demo.json"

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        try:  # created by exactly one process of the run: that one builds
            os.close(os.open(self.started, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        try:
            self.repo.mkdir()
            clone_of_this_tree(self.repo)
            # The build ends with the test run, however the run ends (to its end, Ctrl-C, -x, a CI runner's SIGTERM):
            # a watcher kills it (its process group) when the run's first process is gone. Not the process that
            # started it: the run's other process may still wait for the build; and after a Ctrl-C, pytest-xdist's
            # controller kills its workers 10 s later, whatever teardown they are in.
            run_pid = os.getppid() if os.environ.get("PYTEST_XDIST_WORKER") else os.getpid()
            watcher = f"(while kill -0 {run_pid} 2> /dev/null; do sleep 1; done; kill -KILL 0) & watcher=$!; "
            # The shell writes make's exit status and duration when make ends, for whichever process waits.
            script = (f'{watcher}SECONDS=0; {as_typed(self.command)} > "{self.log}" 2>&1; '
                      f'echo "{{\\"returncode\\": $?, \\"seconds\\": $SECONDS}}" > "{self.result}.tmp" && '
                      f'mv "{self.result}.tmp" "{self.result}"; kill $watcher')
            # A session of its own, so that the watcher ends make and all it started.
            self.process = subprocess.Popen(["bash", "-c", script], cwd=self.repo, env=environment(self.repo),
                                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL, start_new_session=True)
        except Exception as error:  # the journeys fail with it, in every process; the other tests run on
            self.result.with_suffix(".tmp").write_text(json.dumps({"returncode": None, "error": repr(error)}))
            self.result.with_suffix(".tmp").replace(self.result)

    def deadline(self) -> float:
        return self.started.stat().st_mtime + self.TIMEOUT

    def finished(self) -> dict:
        """``{"returncode", "seconds"}`` of `make demo`, once it has ended and succeeded."""
        while not self.result.exists():
            assert time.time() < self.deadline(), f"make demo has not ended within {self.TIMEOUT} s: {self.log}"
            assert self.process is None or self.process.poll() is None or self.result.exists(), \
                "the process running make demo ended without its exit status"
            time.sleep(1)
        result = read(self.result)
        assert result["returncode"] == 0, f"make demo failed: {result.get('error') or self.log.read_text()[-8000:]}"
        return result


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
