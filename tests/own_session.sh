#!/usr/bin/env bash
# `make test` runs the tests through this: in a session of their own, where they yield the CPU to the demo build
# that the journeys wait for (tests/conftest.py, `yield_the_cpu_to_the_build`). Where Linux shares the CPU between
# sessions first (autogroup), tests run in a terminal's session would take half of it from the build.
set -u
if ! command -v setsid > /dev/null; then
  exec "$@"
fi
# Outside the caller's process group the tests see none of its signals, so this passes them on. The first stop
# (Ctrl-C, Ctrl-\, a closed terminal, the SIGTERM of a runner's time limit, which make passes on) as Ctrl-C, which
# pytest ends on with its teardown, and the demo build with the run (tests/journeys.py); a second stop with SIGTERM.
# Where this script started with Ctrl-C ignored, so do the tests (`trap -` cannot give it back): SIGTERM at once.
if [ -n "$(trap -p INT)" ]; then first_stop=TERM; else first_stop=INT; fi
stops=0
trap 'stops=$((stops + 1))' INT TERM HUP QUIT
# A script's background job leads no process group, so setsid runs the command itself as the new session's leader
# (no fork): $! names that session's process group.
(trap - INT QUIT TERM HUP; exec setsid "$@") &
tests=$!
# Ctrl-Z pauses the tests with make, `fg` resumes them.
trap 'kill -STOP -- "-$tests" 2> /dev/null' TSTP
trap 'kill -CONT -- "-$tests" 2> /dev/null' CONT
passed_on=0
# Polled: a signal that comes while the tests start, or between two waits, is passed on all the same.
while kill -0 "$tests" 2> /dev/null; do
  if [ "$stops" -gt "$passed_on" ]; then
    signal=$([ "$stops" -eq 1 ] && echo "$first_stop" || echo TERM)
    kill "-$signal" -- "-$tests" 2> /dev/null && passed_on=$stops
  fi
  sleep 0.2 & wait $!
done
wait "$tests"
