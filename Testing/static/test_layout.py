"""The layout's rules (docs/architecture.md): imports point one way (module -> its Lib -> SAMMedLib -> sammed),
no import cycle in the core, the core imports no Slicer/Qt/VTK/CTK and no torch at ``import sammed``, Lib files
that CI runs on slicer-core import only MRML, vtk, numpy and the packages below them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STDLIB = set(sys.stdlib_module_names) | {"__future__"}
# where each part lives, and what it may import from the project (itself included)
PLACES = {
    "sammed": "sammed",
    "SAMMedLib": "SAMMedLib",
    "SegmentEditorSAMMedLib": "SegmentEditorSAMMedLib",
    "SAMMedAnnotatorLib": "SAMMedAnnotator/SAMMedAnnotatorLib",
    "SAMMedAutoLib": "SAMMedAuto/SAMMedAutoLib",
    "SAMMedAnnotator.py": "SAMMedAnnotator/SAMMedAnnotator.py",
    "SAMMedAuto.py": "SAMMedAuto/SAMMedAuto.py",
}
ALLOWED = {
    "sammed": {"sammed"},
    "SAMMedLib": {"SAMMedLib", "sammed"},
    "SegmentEditorSAMMedLib": {"SegmentEditorSAMMedLib", "SAMMedLib", "sammed"},
    "SAMMedAnnotatorLib": {"SAMMedAnnotatorLib", "SAMMedLib", "sammed"},
    "SAMMedAutoLib": {"SAMMedAutoLib", "SAMMedLib", "sammed"},
    # the annotator registers the effect (it imports the effect's package for that, nothing else of it)
    "SAMMedAnnotator.py": {"SAMMedAnnotatorLib", "SegmentEditorSAMMedLib", "SAMMedLib", "sammed"},
    "SAMMedAuto.py": {"SAMMedAutoLib", "SAMMedLib", "sammed"},
}
PROJECT = {
    "sammed",
    "SAMMedLib",
    "SegmentEditorSAMMedLib",
    "SAMMedAnnotatorLib",
    "SAMMedAutoLib",
    "SAMMedAnnotator",
    "SAMMedAuto",
}
# Lib files tested on slicer-core: only these third-party imports (and, for the few parts that run only inside the
# application, what they need there, imported inside their functions or in app-only files)
MRML_ONLY = {"numpy", "slicer", "vtk"}
MRML_ONLY_FOLDERS = ("SAMMedLib", "SAMMedAnnotatorLib", "SAMMedAutoLib")
APP_EXTRAS = {
    "Dependencies.py": {"PyTorchUtils", "qt"},
    "WidgetHelpers.py": {"qt"},
    "ComputeOnSection.py": {"qt", "ctk"},  # a widget the modules build in the app
}


def python_files(folder: str) -> list[Path]:
    base = ROOT / folder
    if base.is_file():
        return [base]
    return sorted(p for p in base.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    parts = [p for p in parts if p not in ("SAMMedAnnotator", "SAMMedAuto")] or [path.stem]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> list[str]:
    """Absolute names of every module ``path`` imports (function-level imports included)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            out += [f"{base}.{a.name}" for a in node.names] + [base]
    return out


@pytest.mark.parametrize("folder", list(ALLOWED))
def test_imports_point_one_way(folder):
    for path in python_files(PLACES[folder]):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in PROJECT:
                assert top in ALLOWED[folder], f"{path.relative_to(ROOT)} imports {name}"


def test_core_has_no_import_cycle():
    modules = {module_name(p): p for p in python_files("sammed")}
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for imported in imports_of(path):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(imported + "."):
                graph[name].add(imported)
    seen, stack, on_stack = set(), [], set()

    def visit(node):  # depth-first search; a back edge is a cycle
        seen.add(node)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(nxt) :] + [nxt]))
            if nxt not in seen:
                visit(nxt)
        stack.pop()
        on_stack.discard(node)

    for node in sorted(graph):
        if node not in seen:
            visit(node)


def test_core_imports_no_slicer_qt_vtk_ctk():
    for path in python_files("sammed"):
        for name in imports_of(path):
            assert name.split(".")[0] not in {"slicer", "qt", "vtk", "ctk"}, f"{path.name} imports {name}"


@pytest.mark.parametrize("folder", MRML_ONLY_FOLDERS)
def test_lib_files_run_on_slicer_core(folder):
    for path in python_files(PLACES[folder]):
        allowed = STDLIB | MRML_ONLY | PROJECT | APP_EXTRAS.get(path.name, set())
        for name in imports_of(path):
            assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_import_sammed_pulls_no_torch():
    modules = (
        "sammed, sammed.io, sammed.geometry, sammed.segmenter, sammed.cache, sammed.cli, sammed.evaluate, "
        "sammed.evaluate.interactive, sammed.evaluate.propagation, sammed.propagate, sammed.assist.config"
    )
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_files_stay_small():
    folders = (
        "sammed",
        "SAMMedLib",
        "SegmentEditorSAMMedLib",
        "SAMMedAnnotator",
        "SAMMedAuto",
        "Testing",
        "benchmarks",
        "scripts",
    )
    big = {
        p.relative_to(ROOT).as_posix(): n
        for f in folders
        for p in python_files(f)
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > 520
    }
    assert not big, f"files over ~500 lines: {big}"


def test_functions_stay_short():
    """No function body (signature and docstring not counted) over ~60 lines."""
    long = []
    for folder in (
        "sammed",
        "SAMMedLib",
        "SegmentEditorSAMMedLib",
        "SAMMedAnnotator",
        "SAMMedAuto",
        "benchmarks",
        "scripts",
    ):
        for path in python_files(folder):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    body = node.body[1:] if ast.get_docstring(node) and len(node.body) > 1 else node.body
                    lines = node.end_lineno - body[0].lineno + 1
                    if lines > 62:
                        long.append(f"{path.relative_to(ROOT)}:{node.name} ({lines})")
    assert not long, f"functions over ~60 lines: {long}"


def test_readme_and_docs_name_no_shared_folder():
    """A user's clone has no ../shared: every command and path in the README and docs must work from the repository
    (the example data is bundled in Testing/Data)."""
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    offending = [
        f"{p.name}:{n}"
        for p in texts
        for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "../shared" in line
    ]
    assert not offending, offending
