"""The test run's own machinery (conftest.py, journeys.py, .ci/run): what it changes outside itself, and how it ends."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists() or not shutil.which("setsid"),
                    reason="a kernel without autogroup, or no setsid")
@pytest.mark.parametrize(("own_process_group", "session_nice"), [
    (False, "10"),  # `.ci/run`: `make test` leads a session of its own, whose priority the tests lower
    (True, "0"),    # a terminal: the tests are a job (a process group) in the shell's session, which keeps its own
])
def test_the_tests_lower_their_sessions_priority_only_in_a_session_of_their_own(own_process_group, session_nice):
    lower = (f"import os, sys; sys.path.insert(0, {str(TESTS)!r}); import conftest; "
             f"{'os.setpgid(0, 0); ' if own_process_group else ''}"
             "conftest.yield_the_cpu_to_the_build(); print(open('/proc/self/autogroup').read())")
    # A new session, led by a shell as a terminal's is; the tests are its child, as there.
    done = subprocess.run(["setsid", "--wait", "sh", "-c", '"$0" -c "$1"', sys.executable, lower],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == session_nice, done.stdout  # "/autogroup-<n> nice <value>"


# `make` for `.ci/run`: writes its pid, then waits as the tests would, until Ctrl-C (SIGINT) or at once if told.
STAND_IN_MAKE = """#!/bin/sh
trap 'kill $!; echo "$*" > interrupted; exit 130' INT
echo $$ > started
[ -n "$EXIT_AT_ONCE" ] && exit "$EXIT_AT_ONCE"
sleep 120 & wait $!
"""


def start_ci_run(tmp_path, sigint=signal.SIG_DFL, **env):
    repo, bin_dir = tmp_path / "clone", tmp_path / "bin"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(TESTS.parent / ".ci" / "run", repo / ".ci" / "run")
    bin_dir.mkdir()
    (bin_dir / "make").write_text(STAND_IN_MAKE)
    (bin_dir / "make").chmod(0o755)
    environment = {"PATH": f"{bin_dir}:/usr/bin:/bin", **env}
    # As a CI runner starts it: a process group of its own, which the runner signals at its time limit; Ctrl-C
    # (SIGINT) as the runner left it (ignored by a job that a script started in the background).
    return repo, subprocess.Popen(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=environment,
                                  start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


@pytest.mark.skipif(not shutil.which("setsid"), reason="no setsid: .ci/run runs make test in place")
@pytest.mark.parametrize(("sigint", "stopped_by"), [
    (signal.SIG_DFL, "Ctrl-C"),  # pytest ends the run, its teardown included
    (signal.SIG_IGN, "SIGTERM"),  # ignored since .ci/run started: 5 s later, the tests are terminated
])
def test_ci_run_stops_the_tests_when_its_runner_stops_it(tmp_path, sigint, stopped_by):
    repo, ci_run = start_ci_run(tmp_path, sigint)
    started = repo / "started"
    deadline = time.monotonic() + 60
    while not started.exists() or not started.read_text().strip():
        assert time.monotonic() < deadline and ci_run.poll() is None, "the stand-in make test never started"
        time.sleep(0.05)
    tests = int(started.read_text())
    assert os.getsid(tests) == tests != os.getsid(ci_run.pid)  # `make test` leads a session of its own

    os.killpg(ci_run.pid, signal.SIGTERM)  # the runner's time limit: its job's process group, not the tests'
    status = ci_run.wait(timeout=60)
    assert process_group_ends(tests, within=10)  # nothing of the tests' session is left
    if stopped_by == "Ctrl-C":
        assert status == 130  # the tests' own exit status, once they have ended
        assert (repo / "interrupted").read_text().split() == ["test"]  # their Ctrl-C handler ran
    else:
        assert status == 128 + signal.SIGTERM and not (repo / "interrupted").exists()


@pytest.mark.parametrize("status", ["0", "3"])
def test_ci_run_exits_with_the_tests_status(tmp_path, status):
    _, ci_run = start_ci_run(tmp_path, EXIT_AT_ONCE=status)
    assert ci_run.wait(timeout=60) == int(status)


def test_the_demo_build_ends_with_the_test_run_however_it_ends(tmp_path):
    # After a Ctrl-C or a runner's time limit, pytest-xdist's controller kills the worker that started `make demo`
    # before its teardown could end the build: the build ends with the run instead, and does not hold the CPU on.
    test_run = subprocess.Popen(
        [sys.executable, "-c", f"import pathlib, sys, time; sys.path.insert(0, {str(TESTS)!r}); import journeys; "
                               f"build = journeys.DemoBuild(pathlib.Path({str(tmp_path)!r}), command='sleep 300'); "
                               "build.start(); print(build.process.pid, flush=True); time.sleep(300)"],
        stdout=subprocess.PIPE, text=True, env={k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"})
    build = int(test_run.stdout.readline())
    assert os.getpgid(build) == build  # started: `sleep 300` in its process group
    test_run.kill()
    test_run.wait()
    assert process_group_ends(build, within=30), "the demo build outlived the test run that started it"


def process_group_ends(group: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
