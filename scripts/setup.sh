#!/usr/bin/env bash
# Create (or reuse) .venv and install the project with its dev extra, at the versions of constraints.txt (the lock the
# test suite passed with; scripts/lock.sh rewrites it). Torch goes in first, alone: without CUDA the CPU build of the
# locked version, so that pip never pulls a multi-GB CUDA build; a torch already in the venv (a CUDA build of your
# choice) is kept, and the rest is locked around it. EXTRAS (default: dev, what the tests need) names the optional
# extras; the demo sets it empty, which skips 43 packages (pytest, peft, mypy, ruff, wandb, mlflow-skinny and theirs).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
EXTRAS=${EXTRAS-dev}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
# torch's version from its metadata: importing torch before numpy is in warns, and takes seconds
if ! "$VENV/bin/python" -c "from importlib.metadata import version; version('torch')" 2>/dev/null; then
    "${PIP[@]}" -c constraints.txt torch
fi
torch_version=$("$VENV/bin/python" -c "from importlib.metadata import version; print(version('torch').split('+')[0])")
sed -E "s/^torch==.*/torch==$torch_version/" constraints.txt > "$VENV/constraints.txt"
stamp="$VENV/.installed-$( (cat pyproject.toml "$VENV/constraints.txt"; echo "$EXTRAS") | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    "${PIP[@]}" -c "$VENV/constraints.txt" -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$stamp"
fi
