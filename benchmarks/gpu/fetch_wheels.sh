#!/usr/bin/env bash
# Run HERE (a machine that reaches PyPI), before the GPU run: downloads into .whl/ the wheels the GPU machine's
# image lacks (it has torch, transformers, accelerate, pyarrow, peft; no network). About 58 MB: with the
# working tree (about 3 MB) it stays under the device tool's 64 MiB. The device call then carries `.whl`.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    polars==2.1.0 polars-runtime-32==2.1.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
    trl==1.16.0 liger-kernel==0.8.5 cut-cross-entropy==25.1.1 gguf==0.19.0
du -sh .whl
