"""Static checks of the SAMMedAuto module (no Slicer app needed): .ui bindings, CMake lists, light imports."""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMMedAuto"
MODULE_FILE = MODULE / "SAMMedAuto.py"
UI_FILE = MODULE / "Resources" / "UI" / "SAMMedAuto.ui"


def _parameter_fields() -> set[str]:
    tree = ast.parse(MODULE_FILE.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
                getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in SAMMedAuto.py")


def _ui_names() -> tuple[set[str], list[str]]:
    root = ET.parse(UI_FILE).getroot()
    names = {w.get("name") for w in root.iter("widget")}
    bound = [p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"]
    return names, bound


def test_ui_bindings_name_parameter_node_fields():
    fields = _parameter_fields()
    names, bound = _ui_names()
    assert set(bound) <= fields, f"unknown parameters in the .ui: {set(bound) - fields}"
    # every setting is bound, except the segment ID (set from the segment selector by the widget)
    assert fields - set(bound) == {"segmentID"}
    assert len(bound) == len(set(bound))


def test_widget_uses_only_widgets_of_the_ui():
    names, _ = _ui_names()
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text()))
    assert used, "the widget should use its .ui"
    assert used <= names, f"widgets missing from the .ui: {used - names}"


def test_cmake_lists_every_python_file_and_resource():
    cmake = (MODULE / "CMakeLists.txt").read_text().replace("${MODULE_NAME}", "SAMMedAuto")
    listed = set(re.findall(r"^\s+(\S+\.(?:py|png|ui))\s*$", cmake, flags=re.MULTILINE))
    files = {p.relative_to(MODULE).as_posix() for p in MODULE.rglob("*")
             if p.is_file() and p.suffix in (".py", ".png", ".ui") and "__pycache__" not in p.parts}
    assert files == listed, f"missing from CMake: {files - listed}; listed but absent: {listed - files}"
    assert "WITH_GENERIC_TESTS" in cmake and "slicer_add_python_unittest" in cmake


def _top_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def test_nothing_heavy_at_module_load_and_lib_is_qt_free():
    heavy = {"torch", "sammed", "segment_anything", "numpy", "SAMMedAutoLib", "SAMMedAnnotatorLib"}
    assert not (_top_level_imports(MODULE_FILE) & heavy), "SAMMedAuto.py must import its helpers lazily"
    for path in (MODULE / "SAMMedAutoLib").glob("*.py"):
        imports = _top_level_imports(path)
        assert not imports & {"qt", "ctk", "torch", "slicer.util"}, f"{path.name} imports {imports}"
        assert "import slicer.util" not in path.read_text(), path.name


def test_module_declares_its_dependency():
    text = MODULE_FILE.read_text()
    assert 'self.parent.dependencies = ["SAMMedAnnotator"]' in text
    assert "class SAMMedAutoTest(ScriptedLoadableModuleTest)" in text
