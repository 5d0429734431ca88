"""The Dockerfile cannot be built here (no image registry), so its promises are checked against the repository:
the base image's torch and Python satisfy pyproject (and the transformers pip resolves today), the extras it
installs exist, the files it copies exist and are not excluded from the build context, and it runs as a user."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from importlib.metadata import metadata, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
BASE = re.compile(r"^pytorch/pytorch:(?P<torch>\d+\.\d+\.\d+)-cuda(?P<cuda>[\d.]+)-cudnn\d+-(?P<flavour>devel|runtime)$")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def only(name: str) -> str:
    found = [args for instr, args in instructions() if instr == name]
    assert len(found) == 1, f"expected one {name}, found {found}"
    return found[0]


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def base_torch() -> Version:
    match = BASE.match(only("FROM"))
    assert match, f"FROM {only('FROM')}: expected a pinned pytorch/pytorch:<torch>-cuda<x>-cudnn<n>-devel tag"
    assert match["flavour"] == "devel", "DeepSpeed JIT-compiles its ops with nvcc, which only the devel image has"
    return Version(match["torch"])


def base_python() -> Version:
    arg = next(args for instr, args in instructions() if instr == "ARG" and args.startswith("PYTHON_VERSION="))
    return Version(arg.split("=", 1)[1])


def test_base_image_torch_satisfies_pyproject_and_transformers(project):
    torch = next(Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch")
    assert torch.specifier.contains(base_torch()), f"base image torch {base_torch()} vs pyproject {torch}"
    # the transformers pip installs today turns its torch support off below its own floor
    floors = [Requirement(r) for r in requires("transformers") or [] if Requirement(r).name == "torch"]
    assert all(f.specifier.contains(base_torch()) for f in floors), floors


def test_base_image_python_satisfies_requires_python_and_is_checked_at_build(project):
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(project["requires-python"]).contains(base_python())
    assert SpecifierSet(metadata("transformers")["Requires-Python"] or "").contains(base_python())
    runs = " ".join(args for instr, args in instructions() if instr == "RUN")
    assert "sys.version_info" in runs and "${PYTHON_VERSION}" in runs


def test_install_step_names_existing_extras_and_keeps_the_image_torch(project):
    install = next(args for instr, args in instructions() if instr == "RUN" and "pip install" in args)
    target = re.search(r"""pip install [^&]*?["']?\.\[(?P<extras>[^\]]*)\]["']?""", install)
    assert target, f"no `pip install .[extras]` in: {install}"
    extras = [e.strip() for e in target["extras"].split(",")]
    assert set(extras) <= project["optional-dependencies"].keys(), extras
    assert "-c /tmp/torch-constraint.txt" in install and "torch==" in install  # pip must not replace the CUDA torch
    assert "command -v deepspeed" in install  # the launcher is on PATH, or the build fails


def test_copied_files_exist_and_are_in_the_build_context():
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for _, args in [(i, a) for i, a in instructions() if i == "COPY"]:
        sources = [s for s in args.split()[:-1] if not s.startswith("--")]
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
            assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"COPY {source} is ignored"


def test_dockerignore_keeps_environments_and_outputs_out():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".venv", "runs", ".git"} <= ignored


def test_runs_as_a_non_root_user_in_a_workdir_with_a_default_command():
    users = [args for instr, args in instructions() if instr == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    order = [instr for instr, _ in instructions()]
    assert order.index("USER") > max(i for i, instr in enumerate(order) if instr == "RUN")  # installs ran as root
    assert only("WORKDIR").startswith("/")
    assert only("CMD").startswith("[")  # exec form: signals reach the launcher
