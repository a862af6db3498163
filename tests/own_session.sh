#!/usr/bin/env bash
# `make test` runs the tests through this: in a session of their own, where they yield the CPU to the demo build
# that the journeys wait for (tests/conftest.py, `yield_the_cpu_to_the_build`). Where Linux shares the CPU between
# sessions first (autogroup), tests run in a terminal's session would take half of it from the build.
set -uo pipefail
if ! command -v setsid > /dev/null; then
  exec "$@"
fi
# Outside the caller's process group, the tests would outlive what stops it (Ctrl-C, a CI runner's SIGTERM, which
# make passes on), so this stops them: as Ctrl-C would, and with SIGTERM what is left of them 5 s later, before a
# runner's own grace period ends (they may ignore Ctrl-C: where this script started with it ignored, `trap -` below
# cannot give it back). The demo build they started ends with them (tests/journeys.py).
stop_tests() {
  kill -INT -- "-$tests" 2> /dev/null || return 0
  for _ in 1 2 3 4 5; do
    sleep 1
    kill -0 -- "-$tests" 2> /dev/null || return 0
  done
  kill -TERM -- "-$tests" 2> /dev/null || true
}
stopped=
trap 'stopped=1' TERM INT HUP
# A script's background job leads no process group, so setsid runs the command itself as the new session's leader
# (no fork): $! names that session's process group. A background job would ignore Ctrl-C: trap - gives it back.
(trap - INT QUIT TERM HUP; exec setsid "$@") &
tests=$!
status=0
wait "$tests" || status=$?
if [ -n "$stopped" ]; then  # the wait was cut short: the status is the trap's
  stop_tests
  status=0
  wait "$tests" || status=$?
fi
exit "$status"
