#!/usr/bin/env bash
# The GPU run (benchmarks/gpu/run.py; its docstring says what it measures). From the repository root:
#   bash benchmarks/gpu/run.sh --out results.json         on a GPU machine (carry .whl: fetch_wheels.sh)
#   bash benchmarks/gpu/run.sh --smoke --out smoke.json   on the CPU, tiny shapes (CI runs this)
# Where prefpool is not importable (the GPU machine's image), it is installed from this tree without its
# dependencies, and the carried wheels beside it, into /tmp/site.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c "import prefpool.train" 2>/dev/null; then
    site=/tmp/prefpool-site
    if compgen -G ".whl/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    fi
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" .
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PY" benchmarks/gpu/run.py "$@"
