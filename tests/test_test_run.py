"""The test run's own machinery (conftest.py): what it may change outside itself."""

import shutil
import subprocess
import sys
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
