#!/usr/bin/env bash
# lmms-eval next to the locked stack, without letting it move that stack: `pip install lmms-eval` would replace torch
# (its torchvision pulls a newer one), pin wandb 0.25 and downgrade protobuf. Instead, .venv-lmms sees .venv's
# packages (a .pth line) and gets lmms-eval 0.7 and the few packages its model, task and evaluator modules import,
# each without dependencies (filelock 3: its evaluator patches filelock 3's internal `_api`); then the project, so
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
"$SIDE/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "lmms-eval==0.7.3" loguru sacrebleu \
    portalocker tabulate colorama lxml evaluate datasets multiprocess dill pytz tenacity "filelock<4" \
    pytablewriter DataProperty mbstrdecoder typepy tabledata tcolorpy pathvalidate chardet
"$SIDE/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e .
"$SIDE/bin/python" -c "from lmms_eval.models import get_model; get_model('avtrain'); print('lmms-eval: --model avtrain')"
