"""Check that imports only point down the layers of ARCHITECTURE.md: `python scripts/check_layers.py`.

Every import of a project module (at module level or inside a function) is an edge. An edge is allowed within one
unit (a package or module of the table below) and from a unit to a unit of a lower layer; an edge to a unit of the
same layer (train, merge and eval are peers) or of a higher one is reported. Exit 0 when there is none.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS: list[tuple[str, ...]] = [  # lowest first; each entry a unit (a package or a module)
    ("pipeline.config", "pipeline.modality", "pipeline.media", "pipeline.formats", "pipeline.storage"),
    ("pipeline.model",),
    ("pipeline.adapters",),
    ("pipeline.data",),
    ("pipeline.rundir",),
    ("pipeline.train", "pipeline.merge", "pipeline.eval"),
    ("pipeline.continual", "pipeline.compare"),
    ("data_prep",),
    ("pipeline.testing",),
    ("launch",),
]
PACKAGES = ("pipeline", "data_prep", "launch")


def unit_of(module: str) -> tuple[int, str] | None:
    """(layer, unit) of a module name: the longest unit it is, or lies inside; None outside the project."""
    found = [
        (layer, unit)
        for layer, units in enumerate(LAYERS)
        for unit in units
        if module == unit or module.startswith(unit + ".")
    ]
    return max(found, key=lambda f: len(f[1])) if found else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(root: Path, name: str) -> bool:
    path = root / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def imports(tree: ast.AST, module: str, is_package: bool, root: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import of a project module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import sub` may name a submodule: then the edge goes to the submodule
            found += [
                (node.lineno, f"{base}.{alias.name}" if is_module(root, f"{base}.{alias.name}") else base)
                for alias in node.names
            ]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            module = module_name(path, root)
            if module in PACKAGES:  # the empty top-level package files
                continue
            source = unit_of(module)
            if source is None:
                out.append(f"{path.relative_to(root)}: module {module} is in no layer of scripts/check_layers.py")
                continue
            tree = ast.parse(path.read_text(), str(path))
            for line, name in dict.fromkeys(imports(tree, module, path.name == "__init__.py", root)):
                target = unit_of(name)
                if target is None or target[1] == source[1] or target[0] < source[0]:
                    continue
                where = "the same layer" if target[0] == source[0] else "a higher layer"
                out.append(f"{path.relative_to(root)}:{line}: {source[1]} imports {name} ({where})")
    return out


def main() -> int:
    found = violations()
    for line in found:
        print(line)
    print(f"import layers: {len(found)} upward or sideways edge(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
