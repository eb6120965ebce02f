"""The package's shape stays true: one-way layers, no import cycle, no import hidden in a function
to dodge one (command modules excepted: they import lazily so that `fedprostate --help` is fast;
so does the root package's ``__getattr__``, so that `import fedprostate` is fast)."""

import ast
import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fedprostate"
LAZY_OK = ("commands",)  # CLI start-up speed, documented in commands/__init__.py
ROOT_LAZY_OK = {"fedprostate.api"}  # the Python API, loaded on first attribute access
# A deployment's ClientApp process (one per message in Flower 1.42) must not import torch, timm
# or peft when a warm site process does the work: measured in the README, "Speed and scale" (fl/warm.py).
FILE_LAZY_OK = {
    "fl/client_app.py": {"fedprostate.fl", "fedprostate.fl.site_mods"},
    "fl/site.py": {"fedprostate.engine"},
    "fl/warm.py": {"fedprostate.fl", "fedprostate.fl.site_mods"},
}


def test_the_layers_contract_holds():
    """Runs the import-linter contract of pyproject.toml ([tool.importlinter]), in its own
    process: import-linter reconfigures logging and would silence other tests' loggers."""
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache",
         "--config", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, encoding="utf-8", cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.find_modules_directly_imported_by(node):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return out


def test_no_import_cycle_between_modules():
    graph = grimp.build_graph("fedprostate")
    # a package's __init__ importing its children is not a cycle of code
    assert _cycles(graph) == []


def test_project_imports_live_at_module_level():
    hidden = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if set(path.relative_to(PACKAGE).parts) & set(LAZY_OK):
            continue
        root = path == PACKAGE / "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(node):
                    if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith(
                        "fedprostate"
                    ):
                        names = {f"{sub.module}.{a.name}" for a in sub.names}
                        if root and names <= ROOT_LAZY_OK:
                            continue
                        allowed = FILE_LAZY_OK.get(path.relative_to(PACKAGE).as_posix(), set())
                        if sub.module in allowed and {a.name for a in sub.names} <= {
                            "client",
                            "setup",
                            "train_message",  # the site's mod chain: needs torch to decode
                        }:
                            continue
                        hidden.append(f"{path.relative_to(PACKAGE)}:{sub.lineno} {sub.module}")
    assert hidden == []
