"""The one-way layering of the package, checked statically on every module's imports."""

import ast
from pathlib import Path

import memgeo

ORDER = ["errors", "io", "data", "models", "geometry", "memorization", "collapse", "report", "workflows", "cli"]
# report deliberately sits on plain arrays: it may use errors/io only.
ALLOWED = {layer: set(ORDER[: i + 1]) for i, layer in enumerate(ORDER)}
ALLOWED["report"] = {"errors", "io", "report"}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "memgeo" else None


def test_imports_only_go_downwards():
    root = Path(memgeo.__file__).parent
    bad = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).with_suffix("")
        layer = rel.parts[0]
        if layer == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = _layer(name)
                if target and target not in ALLOWED[layer]:
                    bad.append(f"{rel}: imports {name}")
    assert bad == []
