#!/usr/bin/env bash
# The GPU benchmarks in one command, for one H200 machine (16 cores), ended DEADLINE (450) s after the start,
# within a hard 8-minute stop:
#   1. bench/train_gpu.py --sweep   (training configurations; budget TRAIN_BUDGET s, stopped at +20 s)
#   and, beside 1 on one core, bench/collate.py (the trainer's tokenisation per step on this machine's CPU)
#   2. bench/study_gpu.py           (encode, index, retrieve, evaluate + the sweep's training; the time left)
# Results: train_gpu.*, train_collate.* and study_gpu.* in OUT_DIR: by default $OUT when it is set (the folder
# that comes back from the machine: each result lands there as it is written, so a stop keeps what finished),
# else reports/bench. The log: $OUT/gpu_bench.log (or /tmp/gpu_bench.log).
# Run from anywhere:  [OUT=<dir>] bash bench/gpu.sh        Wheels in .whl/ (bench/wheels.sh) are installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-${OUT:-reports/bench}}
WORK=${WORK:-/tmp/colbench-gpu}  # the random ModernBERT-base is built once here and used by both parts
TRAIN_BUDGET=${TRAIN_BUDGET:-250}
DEADLINE=${DEADLINE:-450}  # seconds after the start by which the study has ended: 30 s short of the 480-s stop
BENCH_ARGS=${BENCH_ARGS:-}  # e.g. "--smoke" with OUT_DIR=/tmp/x: the same script on a CPU, tiny sizes
LOG=${OUT:-/tmp}/gpu_bench.log
COLLATE_LOG=${OUT:-/tmp}/gpu_collate.log
# Recorded in train_gpu.json; study_gpu.py projects no training from a file of another run.
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)-$$
start=$SECONDS
mkdir -p "$OUT_DIR" ${OUT:+"$OUT"}

if compgen -G ".whl/*.whl" >/dev/null; then
  # The machine cannot reach a registry: the versions this repository needs travel as wheels.
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  # Not fatal (a machine may have every package), but the versions below then are the image's own.
  echo "gpu.sh: no wheels in .whl/ (bench/wheels.sh makes them; copy .whl/ to this machine with the repository)"
fi
# One tokenizer thread, as `make study` runs the pipeline (the Makefile exports it, and `python -m colbench.train`
# sets it): with 0 data-loader workers the training process tokenises each step on one core (bench/collate.py).
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  compilers=$(command -v cc gcc | tr '\n' ' ')  # as `which cc gcc`, where `which` itself may be missing
  echo "gpu.sh: run $RUN_ID, results into $OUT_DIR; C compiler (torch.compile's inductor needs one): ${compilers:-NONE}"
  $PY - "$BENCH_ARGS" <<'PY' || exit 1
import importlib.metadata as m, pathlib, sys, sysconfig, torch
def version(name):
    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "MISSING"
names = ("torch", "triton", "transformers", "sentence-transformers", "datasets", "tokenizers", "voyager",
         "pytrec-eval-terrier", "pyarrow")
print("versions:", ", ".join(f"{n} {version(n)}" for n in names), "| torch CUDA", torch.version.cuda,
      "| cuda available:", torch.cuda.is_available(), flush=True)
headers = pathlib.Path(sysconfig.get_paths()["include"], "Python.h").is_file()  # triton builds its launcher with them
print("Python headers (torch.compile's row needs them):", "found" if headers else "MISSING", flush=True)
import sentence_transformers, colbench.train  # training's imports: fail here, in seconds, if one is missing
if not torch.cuda.is_available() and "--smoke" not in sys.argv[1].split():
    sys.exit("gpu.sh: no CUDA device visible: nothing run, no result removed (BENCH_ARGS=--smoke for a CPU check)")
PY
  # The study also needs voyager and pytrec-eval-terrier; training needs neither, so it runs without them.
  if $PY -c "import colbench.index, colbench.retrieve, colbench.evaluate"; then study=1
  else study=0; echo "gpu.sh: the study's imports failed (above): training only"; fi
  # Nothing of an earlier run may pass for this one's (a committed reports/bench/train_gpu.json among them).
  rm -f "$OUT_DIR"/train_gpu.json "$OUT_DIR"/train_gpu.md "$OUT_DIR"/train_collate.json \
        "$OUT_DIR"/train_collate.md "$OUT_DIR"/study_gpu.json "$OUT_DIR"/study_gpu.md
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  # One core of 16; the sweep's training processes use the others (at most 1 + 4 workers at a time).
  timeout 120 $PY bench/collate.py --steps 10 --out "$OUT_DIR" > "$COLLATE_LOG" 2>&1 &
  collate=$!
  # train_gpu.py ends itself at its budget; the timeout is a safety net. On its SIGTERM it kills the running
  # configuration (in a session of its own) before exiting; -k: SIGKILL 10 s later if it has not.
  timeout -k 10 $((TRAIN_BUDGET + 20)) $PY bench/train_gpu.py --sweep --budget "$TRAIN_BUDGET" --run-id "$RUN_ID" \
    --work "$WORK" --out-dir "$OUT_DIR" $BENCH_ARGS
  echo "gpu.sh: training part ended with status $? after $((SECONDS - start)) s"
  wait $collate; echo "gpu.sh: collate ended with status $?"; tail -n 8 "$COLLATE_LOG"
  # The study gets the time actually left: its budget, then 15 s before the timeout stops it, 5 s to spare.
  left=$((DEADLINE - (SECONDS - start) - 20))
  if [ "$study" = 1 ] && [ "$left" -ge 45 ]; then
    timeout -k 5 $((left + 15)) $PY bench/study_gpu.py --budget "$left" --run-id "$RUN_ID" --work "$WORK" \
      --out-dir "$OUT_DIR" $BENCH_ARGS
    echo "gpu.sh: study part ended with status $? after $((SECONDS - start)) s"
  elif [ "$study" = 1 ]; then
    echo "gpu.sh: study skipped: ${left} s left before the deadline"
  fi
} 2>&1 | tee "$LOG"
status=${PIPESTATUS[0]}  # 1 when a check above stopped the run
if [ -n "${OUT:-}" ]; then
  # Only when OUT_DIR was set elsewhere: results written straight into $OUT need no copy.
  if [ "$(cd "$OUT_DIR" && pwd -P)" != "$(cd "$OUT" && pwd -P)" ]; then
    cp "$OUT_DIR"/train_gpu.json "$OUT_DIR"/train_gpu.md "$OUT_DIR"/study_gpu.json "$OUT_DIR"/study_gpu.md \
       "$OUT_DIR"/train_collate.json "$OUT_DIR"/train_collate.md "$OUT"/ 2>/dev/null
  fi
  ls -l "$OUT"
fi
exit "$status"
