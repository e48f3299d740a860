"""The package's layout holds: no import cycles between modules, no imports of the package hidden inside functions
(except for the optional extras listed below, each with its reason), and the benchmarks stay out of the product's
import path."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("avatarcast", "avatarcast_bench")

# (module, imported module) -> why the import waits until the function runs. Only optional extras: modules that
# import a dependency the core install does not have at module level (triton).
OPTIONAL_EXTRAS = {
    ("avatarcast.kernels.dispatch", "avatarcast.kernels.flash_attention"):
        "the Triton kernel imports triton (the `gpu` extra) when it is installed; importing the kernels needs neither "
        "torch nor triton (tests/kernels: test_importing_kernels_needs_no_torch)",
    ("avatarcast_bench.commands.kernels", "avatarcast.kernels.flash_attention"):
        "`avatarcast bench kernels` runs the Triton kernel (the `gpu` extra); the CLI builds its parser without it",
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The package's modules that an import statement loads (``from a.b import c`` loads ``a.b.c`` when that is a
    module, else ``a.b``)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
    return sorted({n for n in names if n.split(".")[0] in PACKAGES})


def _imports(module: str) -> tuple[set[str], set[str]]:
    """(imports at module level, imports inside functions) of one module, as the package's module names."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top: set[str] = set()
    inner: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never imported at run time
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).update(_imported(child, module, path.name == "__init__.py"))
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, False)
    return top, inner


def _with_parents(name: str, importer: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__``, ``a/b/__init__`` and ``a/b/c``; the packages that hold the importer
    are already being imported (a package's ``__init__`` importing its own submodules is no cycle)."""
    parts = name.split(".")
    names = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return [n for n in names if n in MODULES and not importer.startswith(n + ".") and n != importer]


def test_no_imports_of_the_package_inside_functions():
    hidden = []
    for module in MODULES:
        _, inner = _imports(module)
        for name in sorted(inner):
            if (module, name) not in OPTIONAL_EXTRAS:
                hidden.append(f"{module} imports {name} inside a function")
    assert not hidden, "\n".join(hidden)


def test_optional_extras_list_only_imports_that_exist():
    stale = [pair for pair in OPTIONAL_EXTRAS if pair[1] not in _imports(pair[0])[1]]
    assert not stale, f"allowed in-function imports that no longer exist: {stale}"


def test_no_import_cycles():
    graph = {module: sorted({p for name in _imports(module)[0] for p in _with_parents(name, module)})
             for module in MODULES}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for nxt in graph[module]:
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                walk(nxt)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_product_does_not_import_the_benchmarks():
    leaks = [f"{module} imports {name}" for module in MODULES if module.split(".")[0] == "avatarcast"
             for name in sorted(set.union(*_imports(module))) if name.startswith("avatarcast_bench")]
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize("module", ["avatarcast.live.server", "avatarcast.live.session", "avatarcast.offline.cascade",
                                    "avatarcast.cli.commands.serve", "avatarcast.face.video_avatar"])
def test_importing_the_product_leaves_the_benchmarks_unloaded(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('avatarcast_bench')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_cli_loads_the_benchmarks_only_for_its_bench_and_eval_verbs():
    from avatarcast.cli import main as cli
    from avatarcast.cli.commands import bench

    assert {module for module, _ in bench.BENCHES.values()} <= {m for m in MODULES if m.startswith("avatarcast_bench.")}
    assert cli.COMMANDS["eval"][0] in MODULES and cli.COMMANDS["eval"][0].startswith("avatarcast_bench.")


def test_no_module_binds_one_name_twice_at_module_level():
    """Moving imports to module level must not let a later import or definition shadow an earlier one."""
    clashes = []
    for module, path in MODULES.items():
        seen: dict[str, int] = {}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom) or (isinstance(node, ast.Import) and
                                                    all("." not in a.name or a.asname for a in node.names)):
                names = [a.asname or a.name for a in node.names]
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            else:
                continue
            for name in names:
                if name in seen and name != "annotations":
                    clashes.append(f"{module}:{node.lineno} binds {name} again (first at line {seen[name]})")
                seen.setdefault(name, node.lineno)
    assert not clashes, "\n".join(clashes)
