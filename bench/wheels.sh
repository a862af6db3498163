#!/usr/bin/env bash
# Download, into .whl/ (ignored by git), the wheels bench/gpu.sh installs on the GPU machine, which has no
# registry: the versions of this repository's environment that its image lacks or holds older (the image has
# torch, pyarrow, tokenizers, huggingface-hub, accelerate, ...). Python 3.12, x86-64; about 16 MB.
# Then bring .whl/ to the GPU machine with the repository: bench/gpu.sh installs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl \
  transformers==5.24.0 sentence-transformers==6.2.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  voyager==2.2.3 pytrec-eval-terrier==0.5.11
