#!/usr/bin/env bash
# Rewrite constraints.txt (the lock scripts/setup.sh installs with) from a venv the whole suite passed in:
#   bash scripts/lock.sh [PYTHON]      (default .venv/bin/python)
# pip freeze without the project itself; torch's local build tag (+cpu, +cu128) dropped, so the pin holds for any build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
{
    echo "# The exact versions the test suite passed with (scripts/lock.sh wrote this; scripts/setup.sh installs with it)."
    "$PY" -m pip freeze --exclude-editable --disable-pip-version-check | grep -vE '^(#|avtrain==|-e )' \
        | sed -E 's/^(torch[a-z]*==[^+]+)\+.*/\1/'
} > constraints.txt.tmp
mv constraints.txt.tmp constraints.txt
echo "constraints.txt: $(grep -vc '^#' constraints.txt) pins"
