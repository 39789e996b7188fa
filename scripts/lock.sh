#!/usr/bin/env bash
# Resolve requirements/lock.txt (every package the set-up installs, exact versions and hashes) with uv.
#   bash scripts/lock.sh             re-resolve after a change to pyproject.toml, keeping the locked versions
#                                    that still satisfy it
#   bash scripts/lock.sh --upgrade   move every package to its newest release within pyproject.toml's ranges,
#                                    then build a fresh venv from the new lock and run the whole suite on it
# The lock is for CPython 3.11 on x86_64 Linux with the CPU build of torch (requirements/torch-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=.venv-lock-tools
if [ ! -x "$TOOLS/bin/uv" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
upgrade=()
if [ "${1:-}" = "--upgrade" ]; then upgrade=(--upgrade); fi
extras=()
while read -r extra; do extras+=(--extra "$extra"); done < <(grep -v '^#' requirements/extras.txt)
common=(--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --generate-hashes
        --find-links /opt/wheels --quiet "${upgrade[@]}")
# DS_BUILD_OPS=0: reading DeepSpeed's metadata from its sdist compiles none of its C++/CUDA ops.
DS_BUILD_OPS=0 "$TOOLS/bin/uv" pip compile pyproject.toml "${extras[@]}" -c requirements/torch-cpu.txt \
    "${common[@]}" -o requirements/lock.txt
"$TOOLS/bin/uv" pip compile requirements/nodeps.in --no-deps "${common[@]}" -o requirements/nodeps.txt
echo "wrote requirements/lock.txt and requirements/nodeps.txt"
if [ "${upgrade[*]}" ]; then
    # A fresh venv from the new lock: the suite must pass there before the lock is committed.
    rm -rf .venv-refresh
    VENV=.venv-refresh bash scripts/setup.sh
    .venv-refresh/bin/python -m pytest -q
    git --no-pager diff --stat -- requirements/
    echo "the suite passed on the refreshed lock; review 'git diff requirements/' and commit it with .venv rebuilt"
fi
