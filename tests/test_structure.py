"""The shape of the code: imports run one way, functions and classes stay small, --help stays light,
and every choice the config offers has an implementation (docs/architecture.md)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from models.config import config_field
from tests.conftest import REPO

SCRIPTS = ["process_input.py", "process_decoding.py", "train.py", "compress_images.py", "evaluate.py"]
CORE = "core"  # the modules directly in models/, which docs/architecture.md lists
CORE_MODULES = {"__init__", "cli", "config", "imageio", "jobcontrol", "layout", "palettes", "rate", "runtime",
                "semantic_code", "weights"}
# What each part of models/ may import (besides itself); the core may import only the core.
ALLOWED = {
    CORE: set(),
    "bitstream": {CORE},
    "encode": {CORE, "bitstream"},  # encoding writes .sem files
    "baselines": {CORE},
    "decode": {CORE, "bitstream"},  # decoding reads .sem files
    "evaluation": {CORE, "bitstream", "encode"},  # re-segmenting reconstructions
    "train": {CORE, "encode", "decode"},  # data preparation; the checkpoint format, SD1.5, the decoder
    "tiny": {CORE, "encode", "decode", "evaluation"},  # the real formats it writes
    "quickstart": {CORE, "bitstream", "encode", "decode", "evaluation", "baselines"},
    "app": {CORE, "bitstream", "encode", "decode", "evaluation", "baselines", "quickstart"},  # the page over it all
}
MAX_FUNCTION_LINES, MAX_CLASS_LINES = 50, 250


def python_files() -> list[Path]:
    return sorted(path for folder in ("models", "tests", "bench") for path in (REPO / folder).rglob("*.py")) + [
        REPO / script for script in SCRIPTS]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every ``models.*`` module that ``path`` imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "models":
            known = [f"{node.module}.{alias.name}" for alias in node.names]
            found |= {name for name in known if _is_module(name)}
            if not all(_is_module(name) for name in known):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "models"}
    return found


def _is_module(name: str) -> bool:
    relative = Path(*name.split("."))
    return (REPO / relative).with_suffix(".py").is_file() or (REPO / relative / "__init__.py").is_file()


def part(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 2 or (REPO / "models" / names[-1]).is_dir() else CORE


def test_the_core_is_what_the_architecture_lists():
    assert {path.stem for path in (REPO / "models").glob("*.py")} == CORE_MODULES


def test_imports_run_one_way():
    wrong = []
    for path in (REPO / "models").rglob("*.py"):
        source = part(module_name(path))
        for target in imported_modules(path):
            if part(target) != source and part(target) not in ALLOWED[source]:
                wrong.append(f"{module_name(path)} ({source}) imports {target} ({part(target)})")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles():
    graph = {module_name(path): imported_modules(path) - {module_name(path)}
             for path in (REPO / "models").rglob("*.py")}
    state, stack = {}, []

    def cycle_from(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            found = cycle_from(target) if target not in state else None
            if found:
                return found
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        cycle = cycle_from(module) if module not in state else None
        assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_functions_and_classes_stay_small():
    large = []
    for path in python_files():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            limit = {ast.FunctionDef: MAX_FUNCTION_LINES, ast.AsyncFunctionDef: MAX_FUNCTION_LINES,
                     ast.ClassDef: MAX_CLASS_LINES}.get(type(node))
            if limit and node.end_lineno - node.lineno + 1 > limit:
                large.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}: "
                             f"{node.end_lineno - node.lineno + 1} lines (limit {limit})")
    assert not large, "\n".join(large)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_torch(script):
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / script), "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "usage:" in result.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if "|" in line}
    assert not imported & {"torch", "diffusers", "transformers", "pytorch_lightning"}


def test_every_config_choice_has_an_implementation():
    from models.decode.decoder import SCHEDULERS
    from models.evaluation.metrics import LPIPS_TRUNKS
    from models.train.controlnet_module import LR_SCHEDULES

    for key, implemented in (("decode.scheduler", SCHEDULERS), ("train.lr_scheduler", LR_SCHEDULES),
                             ("evaluate.lpips_net", LPIPS_TRUNKS)):
        assert set(config_field(key).metadata["choices"]) == set(implemented), key
