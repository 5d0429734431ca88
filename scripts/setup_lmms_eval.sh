#!/usr/bin/env bash
# lmms-eval next to the locked stack, without letting it move that stack: `pip install lmms-eval` would replace torch
# (its torchvision pulls a newer one), pin wandb 0.25 and downgrade protobuf. Instead, .venv-lmms sees .venv's
# packages (a .pth line) and gets lmms-eval 0.7 and the few packages its model, task and evaluator modules import,
# each without dependencies and at the versions tested (filelock 3: its evaluator patches filelock 3's internal
# `_api`); then the project, so
# lmms-eval finds `--model avtrain` through its entry point.
#   bash scripts/setup_lmms_eval.sh && .venv-lmms/bin/lmms-eval --model avtrain ...
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${VENV:-.venv}
SIDE=${LMMS_VENV:-.venv-lmms}
[ -x "$BASE/bin/python" ] || bash scripts/setup.sh
site=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
[ -x "$SIDE/bin/python" ] || python3 -m venv "$SIDE"
echo "$(cd "$site" && pwd)" > "$("$SIDE/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/avtrain-base.pth"
"$SIDE/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "lmms-eval==0.7.3" loguru==0.7.3 \
    sacrebleu==2.6.0 portalocker==4.4.2 tabulate==0.10.0 colorama==0.4.6 lxml==6.1.3 evaluate==0.4.6 datasets==5.2.0 \
    multiprocess==0.70.19 dill==0.4.1 pytz==2026.6 tenacity==9.2.1 filelock==3.32.7 pytablewriter==1.2.1 \
    DataProperty==1.1.1 mbstrdecoder==1.1.5 typepy==2.0.0 tabledata==1.3.5 tcolorpy==0.1.7 pathvalidate==3.3.1 \
    chardet==7.7.0 pandas==3.1.1 pyarrow==25.0.1 tzdata==2026.6 aiohttp==3.14.5 aiohappyeyeballs==2.7.1 \
    aiosignal==1.4.0 attrs==26.1.0 frozenlist==1.8.0 multidict==7.2.1 propcache==0.5.4 yarl==1.25.1
"$SIDE/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
# Import everything the CLI and the tests import, so that a missing package fails here, not in the middle of a run.
"$SIDE/bin/python" -c "import lmms_eval.evaluator, lmms_eval.tasks; from lmms_eval.models import get_model
get_model('avtrain'); print('lmms-eval: --model avtrain')"
