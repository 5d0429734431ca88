#!/usr/bin/env bash
# Does the newest transformers release break avtrain? A throwaway venv gets the locked stack (constraints.txt) with
# transformers and the Hugging Face packages it moves with (tokenizers, huggingface-hub, safetensors, accelerate,
# peft) at their newest, then the tests that touch transformers internals run there. Exit 0: the newest release
# works (its deprecation warnings are listed: what the release after it may remove); non-zero: it breaks something.
#
#   bash scripts/check_latest_transformers.sh                  # the newest release on PyPI
#   TRANSFORMERS="transformers==5.40.0rc1" bash scripts/check_latest_transformers.sh   # a given (pre-)release
#
# When: on a schedule (a weekly CI job or cron), and before raising the transformers pin in constraints.txt. It never
# touches .venv; the throwaway venv is removed at the end (KEEP=1 keeps it and prints its path).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEC=${TRANSFORMERS:-transformers}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/avtrain-latest-transformers.XXXXXX")
[ "${KEEP:-0}" = 1 ] && echo "throwaway venv: $WORK/venv" || trap 'rm -rf "$WORK"' EXIT
MOVING='transformers|tokenizers|huggingface-hub|safetensors|accelerate|peft'
grep -vE "^($MOVING)==" constraints.txt > "$WORK/constraints.txt"
python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check -c "$WORK/constraints.txt")
"${PIP[@]}" torch
# the project's dependencies, pytest and peft (the tests import the checkout through PYTHONPATH: nothing is built)
"$PY" -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > "$WORK/requirements.txt"
"${PIP[@]}" --upgrade -r "$WORK/requirements.txt" "$SPEC" peft pytest
version=$("$PY" -c "import transformers; print(transformers.__version__)")
echo "testing transformers $version (locked: $(grep '^transformers==' constraints.txt | cut -d= -f3))"
export PYTHONPATH=$PWD OMP_NUM_THREADS=1 DS_ACCELERATOR=cpu TOKENIZERS_PARALLELISM=false
set +e
"$PY" -m pytest -q -p no:cacheprovider -W "always::FutureWarning" tests/model/test_avllm.py tests/model/test_processor.py \
    tests/model/test_encoders.py tests/adapters/test_routed.py tests/adapters/test_peft_and_merge.py 2>&1 \
    | tee "$WORK/pytest.log"
status=${PIPESTATUS[0]}
set -e
grep -hoE "[^ ]+ (is|are) deprecated and will be removed in [^.]*" "$WORK/pytest.log" | sort -u \
    | sed 's/^/deprecation: /' || true
if [ "$status" -ne 0 ]; then
    echo "warning: transformers $version breaks avtrain (pytest exit $status); keep the lock at the version above" >&2
    exit 1
fi
echo "transformers $version: the transformers-facing tests pass"
