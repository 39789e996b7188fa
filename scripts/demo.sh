#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the embedded default job: `latentreason demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
latentreason demo "$@"
