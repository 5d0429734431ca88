# avtrain on a CUDA node: docker build -t avtrain . && docker run --gpus all --ipc=host -v $PWD/runs:/workspace/avtrain/runs avtrain
#
# Base: PyTorch's own CUDA build, so pip never swaps in another torch (the install below is constrained to it).
# `devel`, not `runtime`: DeepSpeed compiles its ops (FusedAdam, CPU Adam for the offload configs, ...) on first use
# with nvcc, the CUDA headers and a host compiler, which only the devel image has.
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-devel

# The base image's Python, checked below and read by tests/test_dockerfile.py against pyproject's requires-python.
ARG PYTHON_VERSION=3.11

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TOKENIZERS_PARALLELISM=false

# A host C++ compiler for DeepSpeed's JIT builds.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -c "import sys; v = '%d.%d' % sys.version_info[:2]; \
assert v == '${PYTHON_VERSION}', f'base image has Python {v}; set ARG PYTHON_VERSION={v}'"

RUN useradd --create-home --uid 1000 --shell /bin/bash avtrain
WORKDIR /workspace/avtrain

COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY data_prep ./data_prep
COPY launch ./launch
COPY configs ./configs
COPY scripts ./scripts
COPY tests ./tests

# Editable, so the launch scripts (which put the source tree first on sys.path), the configs they name and the
# imported package are one copy of the code. The dev extra (pytest, peft: a few MB over what is installed anyway)
# lets a node check its image before a long job: `docker run avtrain pytest tests/model -q`.
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/torch-constraint.txt \
    && pip install --no-cache-dir -c /tmp/torch-constraint.txt -e ".[dev]" \
    && rm /tmp/torch-constraint.txt \
    && command -v deepspeed \
    && mkdir runs \
    && chown -R avtrain:avtrain /workspace/avtrain

USER avtrain

# The README's first command: the whole pipeline on synthetic data, 2 DeepSpeed ranks, no GPU or download needed.
CMD ["python", "-m", "launch.demo", "--out", "runs/demo"]
