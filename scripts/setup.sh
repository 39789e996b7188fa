#!/usr/bin/env bash
# Create a venv (.venv, or $VENV) and install exactly the locked versions (requirements/lock.txt, with hashes)
# and this package. scripts/lock.sh writes the lock; nothing else is resolved here, so a fresh machine gets
# what the suite last passed with.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
LOCK="${LOCK:-requirements/lock.txt}"  # scripts/lock.sh --lowest passes another resolution
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
. "$VENV/bin/activate"
python -m pip install -q "pip==26.3"
# torch's CPU build comes from this machine's disk (find-links /opt/wheels), every other package from PyPI.
# DS_BUILD_OPS=0: DeepSpeed compiles none of its optional C++/CUDA ops (the CPU tests need none).
# --no-compile, then compileall on every core: pip byte-compiles one file at a time (on 2 idle cores the
# set-up took 71 s instead of 82 s).
DS_BUILD_OPS=0 python -m pip install -q --no-compile --require-hashes -r "$LOCK"
python -m pip install -q --no-compile --require-hashes --no-deps -r requirements/nodeps.txt
# A file written for a newer Python (torch ships one) does not compile; pip's own step skips it silently too.
python -m compileall -q -j 0 "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" >/dev/null || true
# The package itself, built with the locked setuptools (no isolated build environment resolving its own);
# PYTHONWARNINGS hides setuptools' generic notice about editable installs.
PYTHONWARNINGS=ignore python -m pip install -q --no-deps --no-build-isolation -e .
