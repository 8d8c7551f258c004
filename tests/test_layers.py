"""The package's layers only look down: no module imports from a layer above its own."""

import ast
from pathlib import Path

import deeprebirth

PACKAGE = Path(deeprebirth.__file__).parent

#: Bottom to top. A module may import from its own layer and the layers below it.
LAYERS = (
    ("errors", "files", "config", "machine", "parity"),
    ("zoo", "data", "graph"),
    ("plan",),  # the plan format
    ("transforms", "export"),  # the rewrites; export and parity checks
    ("profiling", "evaluation"),
    ("planning", "tuning"),  # finding and choosing merges; tuning what they made
    ("slimming",),
    ("recipe",),
    ("artifacts",),
    ("report",),
    ("pipeline",),
    ("commands",),  # the one-step commands: bench, evaluate, export
    ("flags", "cli", "__main__", "__init__"),
)
LEVEL = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """``deeprebirth.plan.plan`` -> ``plan``; the package itself, or a name its
    ``__init__`` defines (``deeprebirth.__version__``), -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LEVEL else "__init__"


def imports(path: Path):
    """``(line, imported module)`` for every deeprebirth import in ``path``, at any depth."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if node.module else [f"{target}.{a.name}" for a in node.names]
            for name in names:
                if name.split(".")[0] == "deeprebirth":
                    yield node.lineno, name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "deeprebirth":
                    yield node.lineno, a.name


def test_every_module_has_a_layer():
    units = {
        unit_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts))
        for p in PACKAGE.rglob("*.py")
    }
    assert units <= set(LEVEL), f"add {sorted(units - set(LEVEL))} to LAYERS"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        here = LEVEL[unit_of(module)]
        for line, target in imports(path):
            unit = unit_of(target)
            if LEVEL[unit] > here:
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not upward, "\n".join(upward)


#: Modules imported inside functions on purpose: optional extras (ExecuTorch, timm) and what
#: only one rare step needs (each such import says why beside it or in its module's doc).
LAZY = ("executorch", "torchao", "timm", "onnxscript", "onnxruntime.quantization", "tomli")


def test_imports_are_at_the_top_of_modules():
    inside = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    name = "." * node.level + (node.module or "")
                elif isinstance(node, ast.Import):
                    name = node.names[0].name
                else:
                    continue
                if not any(name == m or name.startswith(f"{m}.") for m in LAZY):
                    inside.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {name}")
    assert not inside, "\n".join(inside)
