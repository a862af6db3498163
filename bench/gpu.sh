#!/usr/bin/env bash
# The GPU benchmarks in one command, for one H200 machine (16 cores), within 8 minutes:
#   1. bench/train_gpu.py --sweep   (training configurations; budget TRAIN_BUDGET s, killed at +30 s)
#   2. bench/study_gpu.py           (encode, index, retrieve, evaluate + the sweep's training; STUDY_BUDGET s, +30 s)
# Results: $OUT_DIR (default reports/bench)/train_gpu.* and study_gpu.*, and, where the device tool sets $OUT,
# copies there with the log (that folder is what comes back from the machine).
# Run from anywhere:  bash bench/gpu.sh        Wheels in .whl/ (bench/wheels.sh) are installed first.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${OUT_DIR:-reports/bench}
WORK=${WORK:-/tmp/colbench-gpu}  # the random ModernBERT-base is built once here and used by both parts
TRAIN_BUDGET=${TRAIN_BUDGET:-260}
STUDY_BUDGET=${STUDY_BUDGET:-120}
BENCH_ARGS=${BENCH_ARGS:-}  # e.g. "--smoke" with OUT_DIR=/tmp/x: the same script on a CPU, tiny sizes
LOG=${OUT:-/tmp}/gpu_bench.log
start=$SECONDS

if compgen -G ".whl/*.whl" >/dev/null; then
  # The machine cannot reach a registry: the versions this repository needs travel as wheels.
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
{
  $PY - <<'PY' || exit 1
import importlib.metadata as m, torch
names = ("torch", "transformers", "sentence-transformers", "datasets", "voyager", "pytrec-eval-terrier", "pyarrow")
print("versions:", ", ".join(f"{n} {m.version(n)}" for n in names), "| cuda:", torch.cuda.is_available(), flush=True)
import colbench.train, colbench.index, colbench.evaluate  # fail here, in seconds, if an import is missing
PY
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader || true
  timeout $((TRAIN_BUDGET + 30)) $PY bench/train_gpu.py --sweep --budget "$TRAIN_BUDGET" --work "$WORK" --out-dir "$OUT_DIR" $BENCH_ARGS
  echo "gpu.sh: training part ended with status $? after $((SECONDS - start)) s"
  timeout $((STUDY_BUDGET + 30)) $PY bench/study_gpu.py --budget "$STUDY_BUDGET" --work "$WORK" --out-dir "$OUT_DIR" $BENCH_ARGS
  echo "gpu.sh: study part ended with status $? after $((SECONDS - start)) s"
} 2>&1 | tee "$LOG"
if [ -n "${OUT:-}" ]; then
  cp "$OUT_DIR"/train_gpu.json "$OUT_DIR"/train_gpu.md "$OUT_DIR"/study_gpu.json "$OUT_DIR"/study_gpu.md "$OUT"/ 2>/dev/null
  ls -l "$OUT"
fi
