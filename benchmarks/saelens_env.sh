#!/usr/bin/env bash
# Create (idempotently) a separate virtual environment with SAELens for the
# chapter-4 throughput benchmark (benchmarks/saelens_train.py).
#
# SAELens pins transformer-lens < 4, so it cannot share the course's .venv
# (transformer-lens 4). torch is installed first, at the CPU build that lies on
# the course machines' disk, and a constraint keeps sae-lens's dependencies from
# replacing it (any other torch request pulls gigabytes of CUDA wheels).
#
# Usage: bash benchmarks/saelens_env.sh        (prints the installed version)
#        PYTHON=python3.11 bash benchmarks/saelens_env.sh
set -euo pipefail

TORCH_VERSION="2.13.0"
SAELENS_VERSION="6.54.12"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-saelens"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
echo "torch==$TORCH_VERSION" > "$constraints"

pip_install() {
    "$venv/bin/python" -m pip install --disable-pip-version-check -c "$constraints" "$@"
}

# Skip the (slow) resolver when the pinned versions are already there.
have="$("$venv/bin/python" - <<PY 2>/dev/null || true
from importlib.metadata import version
print(version("torch").split("+")[0], version("sae-lens"))
PY
)"
if [ "$have" != "$TORCH_VERSION $SAELENS_VERSION" ]; then
    pip_install "torch==$TORCH_VERSION"
    pip_install "sae-lens==$SAELENS_VERSION"
fi

"$venv/bin/python" - <<'PY'
from importlib.metadata import version
import torch
import sae_lens  # noqa: F401  (checks that it imports)
print(f"sae-lens {version('sae-lens')} with torch {torch.__version__} in", __import__("sys").prefix)
PY
