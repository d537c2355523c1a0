"""The shape of the library: its parts, one training step, one parser tree, no import circle, a light import."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import facto

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "facto"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _calls(attribute: str) -> list[str]:
    """'path:line' of every call of `<something>.<attribute>(...)` in facto/."""
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def _imports_at_load(path: Path) -> set[str]:
    """facto modules `path` imports when it is loaded (module level, not inside functions)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.With):  # facto/__init__ imports inside `with _quiet_start_up()`
            nodes = node.body
        elif isinstance(node, ast.If):
            nodes = node.body + node.orelse
        else:
            nodes = [node]
        for n in nodes:
            if isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - n.level + 1] + ([n.module] if n.module else []))
                if base.startswith("facto"):
                    candidates = [f"{base}.{a.name}" for a in n.names]
                    found |= {c for c in candidates if _is_module(c)} or {base}
                    if not all(_is_module(c) for c in candidates):
                        found.add(base)
            elif isinstance(n, ast.Import):
                found |= {a.name for a in n.names if a.name.startswith("facto")}
    return found - {module}


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def test_one_place_in_facto_calls_backward():
    assert [c.split(":")[0] for c in _calls("backward")] == ["facto/engine/step.py"]


def test_one_parser_tree():
    parsers = _calls("ArgumentParser") + [c for c in _calls("add_subparsers")]
    assert {c.split(":")[0] for c in parsers} == {"facto/cli/main.py"}, parsers
    for path in MODULES:
        if path.relative_to(PACKAGE).parts[0] != "cli":
            assert "argparse" not in path.read_text(), f"{path} builds a command line outside facto/cli"


def test_no_import_circle():
    graph = {_module_name(p): _imports_at_load(p) for p in MODULES}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            assert state.get(nxt) != 1, "import circle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_settings_import_no_facto_module_and_no_torch():
    tree = ast.parse((PACKAGE / "config.py").read_text())
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level == 0}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    relative_at_load = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.level]
    assert not relative_at_load and not any(m.split(".")[0] in ("torch", "facto", "numpy") for m in imported)


def test_the_top_of_facto_shows_its_parts():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists())
    assert top == ["__init__.py", "__main__.py", "cli", "compress", "config.py", "engine", "memory", "method",
                   "plots", "store"]


# The public API as it was before the package was split into parts: every name still works
PUBLIC_BEFORE_THE_SPLIT = [
    "ActivationMeter", "DataNotFoundError", "EvalEvent", "FactoConv2d", "FactoConvBN", "FactoLinear",
    "FailureEvent", "IndexMaxPool2d", "Job", "JobRegistry", "LayerReport", "MaskReLU", "PRESETS", "RankPolicy",
    "RunConfig", "RunStore", "SETTINGS", "StartEvent", "StepEvent", "SummaryEvent", "compare", "compress",
    "create_model", "dataset_info", "describe", "factorize", "format_report", "fuse_recompute", "hold",
    "list_datasets", "list_models", "load_data", "measure_activations", "parse_rank", "preset", "record",
    "register_model", "run", "saved_activations", "seeded", "sweep", "to_dense", "with_relu_masks"]


def test_the_public_api_resolves():
    import facto

    assert set(PUBLIC_BEFORE_THE_SPLIT) <= set(facto.__all__)
    missing = [name for name in facto.__all__ if not hasattr(facto, name)]
    assert not missing, missing


def test_facto_has_a_version_and_the_command_line_says_it(capsys):
    from facto.cli import main

    assert facto.__version__.count(".") == 2
    try:
        main(["--version"])
    except SystemExit as done:
        assert done.code == 0
    assert capsys.readouterr().out.strip() == f"facto {facto.__version__}"


def test_import_facto_loads_no_heavy_library():
    """`import facto` costs little beyond torch: the rest loads when used. A metered forward of an
    uncompiled model leaves torch's compiler (torch._dynamo, about 3 s to import) unloaded."""
    code = ("import sys, facto; heavy = ['tensorly', 'torchvision', 'scipy', 'sklearn', 'plotly', 'pandas', "
            "'streamlit', 'triton', 'torch._dynamo']; print([m for m in heavy if m in sys.modules])\n"
            "import torch\nnet = torch.nn.Sequential(torch.nn.Linear(300, 300), torch.nn.ReLU())\n"
            "with facto.saved_activations(4, model=net) as meter:\n    net(torch.randn(4, 300)).sum().backward()\n"
            "assert meter.bytes > 0\nprint('torch._dynamo' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.split() == ["[]", "False"], run.stdout + run.stderr
