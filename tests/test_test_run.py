"""The test run's own machinery (conftest.py, journeys.py, own_session.sh, .ci/run): what it changes outside itself,
and how it ends."""

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
@pytest.mark.parametrize(("started_by", "session_nice"), [
    ("make test", "10"),  # tests/own_session.sh: a session of their own, whose priority the tests lower
    ("a terminal", "0"),  # `python -m pytest`: a job (a process group) in the shell's session, which keeps its own
])
def test_the_tests_lower_their_sessions_priority_only_in_a_session_of_their_own(started_by, session_nice):
    lower = (f"import os, sys; sys.path.insert(0, {str(TESTS)!r}); import conftest; "
             f"{'os.setpgid(0, 0); ' if started_by == 'a terminal' else ''}"
             "conftest.yield_the_cpu_to_the_build(); print(open('/proc/self/autogroup').read())")
    if started_by == "make test":
        command = ["bash", str(TESTS / "own_session.sh"), sys.executable, "-c", lower]
    else:  # a new session, led by a shell as a terminal's is; the tests are its child, as there
        command = ["setsid", "--wait", "sh", "-c", '"$0" -c "$1"', sys.executable, lower]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == session_nice, done.stdout  # "/autogroup-<n> nice <value>"


# The tests for `make test` (its PYTEST): write their pid, then wait as the tests would, until Ctrl-C (SIGINT) or at
# once if told; their teardown after Ctrl-C takes a minute if told.
STAND_IN_TESTS = """trap 'echo "$*" > "$OUT/interrupted"; [ -n "$SLOW_TEARDOWN" ] && sleep 60; kill $!; exit 130' INT
echo $$ > "$OUT/started"
[ -n "$EXIT_AT_ONCE" ] && exit "$EXIT_AT_ONCE"
sleep 120 & wait $!
"""


@pytest.fixture
def start_ci_run(tmp_path):
    """Starts `.ci/run` -> make test -> tests/own_session.sh in a copy of the repository's files, with stand-in
    tests; returns it and the tests' pid. What a failed test leaves running is ended."""
    started = []

    def start(sigint=signal.SIG_DFL, **env):
        started.append(_start_ci_run(tmp_path, sigint, **env))
        return started[-1]

    yield start
    for ci_run, tests in started:
        for group in (ci_run.pid, tests):
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start_ci_run(tmp_path, sigint, **env):
    repo, venv = tmp_path / "clone", tmp_path / "venv"
    for name in (".ci/run", "Makefile", "pyproject.toml", "tests/own_session.sh"):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(TESTS.parent / name, repo / name)
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()  # installed since pyproject.toml changed: make test goes straight to the tests
    (tmp_path / "tests.sh").write_text(STAND_IN_TESTS)
    # `make test PYTEST=...` as .ci/run's make sees it: through MAKEFLAGS (a space in a value escaped)
    environment = {"PATH": "/usr/bin:/bin", "VENV": str(venv), "MAKEFLAGS": f"PYTEST=sh\\ {tmp_path / 'tests.sh'}",
                   "OUT": str(tmp_path), **env}
    # As a CI runner starts it: a process group of its own, which the runner signals at its time limit; Ctrl-C
    # (SIGINT) as the runner left it (ignored by a job that a script started in the background), the other signals
    # at their defaults, whatever this test run inherited (nohup ignores SIGHUP).
    def runner_signals():
        for stop in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGTSTP):
            signal.signal(stop, signal.SIG_DFL)
        signal.signal(signal.SIGINT, sigint)

    ci_run = subprocess.Popen(["bash", str(repo / ".ci" / "run")], cwd=tmp_path, env=environment,
                              start_new_session=True, preexec_fn=runner_signals)
    started = tmp_path / "started"

    def pid_written() -> bool:
        return started.exists() and bool(started.read_text().strip())

    assert eventually(lambda: pid_written() or ci_run.poll() is not None, 60) and pid_written(), \
        "the stand-in tests never started"
    return ci_run, int(started.read_text())


needs_setsid = pytest.mark.skipif(not shutil.which("setsid"), reason="no setsid: make test runs the tests in place")


@needs_setsid
@pytest.mark.parametrize(("sigint", "stop", "stopped_by"), [
    # A runner's time limit: SIGTERM to its job's process group, or to .ci/run alone (make passes it on).
    (signal.SIG_DFL, "SIGTERM to the group", "Ctrl-C"),  # the tests end as on Ctrl-C, their teardown included
    (signal.SIG_DFL, "SIGTERM to .ci/run", "Ctrl-C"),
    (signal.SIG_IGN, "SIGTERM to the group", "SIGTERM"),  # Ctrl-C ignored since .ci/run started, by the tests too
    # From a terminal: Ctrl-C, Ctrl-\ and a closed terminal signal its foreground process group.
    (signal.SIG_DFL, "SIGINT to the group", "Ctrl-C"),
    (signal.SIG_DFL, "SIGQUIT to the group", "Ctrl-C"),
    (signal.SIG_DFL, "SIGHUP to the group", "Ctrl-C"),
])
def test_a_stopped_test_run_stops_the_tests(start_ci_run, tmp_path, sigint, stop, stopped_by):
    ci_run, tests = start_ci_run(sigint)
    assert os.getsid(tests) == tests != os.getsid(ci_run.pid)  # the tests lead a session of their own

    sent = getattr(signal, stop.split()[0])
    if stop.endswith(".ci/run"):
        ci_run.send_signal(sent)
    else:
        os.killpg(ci_run.pid, sent)
    status = ci_run.wait(timeout=60)
    assert eventually(lambda: group_gone(tests), within=10)  # nothing of the tests' session is left
    # make ends by the signal it got once the tests have ended; on Ctrl-\ it exits failing instead (no core dump)
    assert status > 0 if sent == signal.SIGQUIT else status == -sent
    if stopped_by == "Ctrl-C":
        assert (tmp_path / "interrupted").read_text().split() == ["--durations=15"]  # their Ctrl-C handler ran
    else:
        assert not (tmp_path / "interrupted").exists()


@needs_setsid
def test_a_second_ctrl_c_ends_a_slow_teardown(start_ci_run, tmp_path):
    ci_run, tests = start_ci_run(SLOW_TEARDOWN="1")
    os.killpg(ci_run.pid, signal.SIGINT)
    assert eventually(lambda: (tmp_path / "interrupted").exists(), 30), "the tests' Ctrl-C handler never ran"
    os.killpg(ci_run.pid, signal.SIGINT)
    assert ci_run.wait(timeout=30) == -signal.SIGINT  # not a minute later: the teardown was cut short
    assert eventually(lambda: group_gone(tests), within=10)


@needs_setsid
def test_ctrl_z_pauses_the_tests_and_fg_resumes_them(start_ci_run):
    ci_run, tests = start_ci_run()
    os.killpg(ci_run.pid, signal.SIGTSTP)  # Ctrl-Z: the terminal's foreground process group
    assert eventually(lambda: process_state(tests) == "T", 30), "Ctrl-Z did not pause the tests"
    os.killpg(ci_run.pid, signal.SIGCONT)  # fg
    assert eventually(lambda: process_state(tests) != "T", 30), "fg did not resume the tests"
    assert ci_run.poll() is None


def eventually(condition, within: float) -> bool:
    """Whether ``condition()`` holds within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def process_state(pid: int) -> str:
    """R, S, T (stopped), ... from /proc/<pid>/stat (after the command's name, which may hold spaces)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.parametrize(("tests_status", "ci_status"), [("0", 0), ("3", 2)])  # 2: make's "a recipe failed"
def test_ci_run_passes_exactly_when_the_tests_pass(start_ci_run, tests_status, ci_status):
    ci_run, _ = start_ci_run(EXIT_AT_ONCE=tests_status)
    assert ci_run.wait(timeout=60) == ci_status


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
    assert eventually(lambda: group_gone(build), within=30), "the demo build outlived the test run that started it"


def group_gone(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False
