#!/usr/bin/env bash
# Resolve requirements/lock.txt (every package the set-up installs, exact versions and hashes) with uv.
#   bash scripts/lock.sh             re-resolve after a change to pyproject.toml, keeping the locked versions
#                                    that still satisfy it
#   bash scripts/lock.sh --upgrade   move every package to its newest release within pyproject.toml's ranges,
#                                    then build a fresh venv from the new lock and run the whole suite on it
#   bash scripts/lock.sh --lowest    run the suite with the oldest transformers pyproject.toml allows (the rest
#                                    resolved around it) in .venv-lowest; the lock is left as it is
# The lock is for CPython 3.11 on x86_64 Linux with the CPU build of torch (requirements/torch-cpu.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
UV_VERSION=0.13.9
TOOLS=.venv-lock-tools
if [ ! -x "$TOOLS/bin/uv" ]; then
    python3 -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
mode="${1:-}"
extras=()
while read -r extra; do extras+=(--extra "$extra"); done < <(grep -v '^#' requirements/extras.txt)
common=(--python-version 3.11 --python-platform x86_64-unknown-linux-gnu --find-links /opt/wheels --quiet)
compile() {  # compile OUTPUT [uv options...]: the project with its locked extras
    local output="$1"
    shift
    # DS_BUILD_OPS=0: reading DeepSpeed's metadata from its sdist compiles none of its C++/CUDA ops.
    DS_BUILD_OPS=0 "$TOOLS/bin/uv" pip compile pyproject.toml "${extras[@]}" -c requirements/torch-cpu.txt \
        "${common[@]}" "$@" -o "$output"
}

if [ "$mode" = "--lowest" ]; then
    lowest=$(grep -oE '"transformers>=[0-9.]+' pyproject.toml | cut -d= -f2)
    echo "transformers==$lowest" > .venv-lowest.constraints
    compile .venv-lowest.txt -c .venv-lowest.constraints --generate-hashes
    rm -rf .venv-lowest
    VENV=.venv-lowest LOCK=.venv-lowest.txt bash scripts/setup.sh
    .venv-lowest/bin/python -m pytest
    echo "the suite passed with transformers $lowest"
    exit 0
fi

upgrade=()
if [ "$mode" = "--upgrade" ]; then upgrade=(--upgrade); fi
compile requirements/lock.txt --generate-hashes "${upgrade[@]}"
"$TOOLS/bin/uv" pip compile requirements/nodeps.in --no-deps --generate-hashes "${common[@]}" -o requirements/nodeps.txt
echo "wrote requirements/lock.txt and requirements/nodeps.txt"
if [ "$mode" = "--upgrade" ]; then
    # A fresh venv from the new lock: the suite must pass there before the lock is committed.
    rm -rf .venv-refresh
    VENV=.venv-refresh bash scripts/setup.sh
    .venv-refresh/bin/python -m pytest
    git --no-pager diff --stat -- requirements/
    echo "the suite passed on the refreshed lock; review 'git diff requirements/' and commit it with .venv rebuilt"
fi
