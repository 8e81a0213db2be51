"""The Segment Editor effect's registration, replayed without the app.

Slicer's ``qSlicerSegmentEditorScriptedEffect::setPythonSource``
(Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx, read at Slicer commit
583e9b37d5) takes the module name from the effect file's folder and the class name from its file name (``Effect``
appended if missing). If ``sys.modules`` already holds that module with that class, it uses it; otherwise
``qSlicerScriptedUtils::loadSourceAsModule`` loads the file under the folder's name, replacing whatever was there
(our Lib package, in the bug the review found). ``registerSegmentEditorEffect`` therefore imports the effect's
package first. These tests run the same lookup on the real package.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def slicer_effect_lookup(source: Path) -> tuple[str, str, object | None]:
    """(module name, class name, class found in sys.modules or None) as setPythonSource computes them."""
    module_name = source.parent.name
    class_name = source.stem if source.stem.endswith("Effect") else source.stem + "Effect"
    module = sys.modules.get(module_name)
    return module_name, class_name, getattr(module, class_name, None) if module is not None else None


def registered_source() -> Path:
    """The file ``registerSegmentEditorEffect`` passes to ``setPythonSource``, and a check of its import order."""
    tree = ast.parse((ROOT / "SAMMedAnnotator" / "SAMMedAnnotator.py").read_text(encoding="utf-8"))
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "registerSegmentEditorEffect")
    calls = [n for n in ast.walk(func) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "setPythonSource"]
    imports = [n for n in ast.walk(func) if isinstance(n, ast.Import) and n.names[0].name == "SegmentEditorSAMMedLib"]
    assert calls and imports and imports[0].lineno < calls[0].lineno, "the package must be imported before"
    names = [c.value for c in ast.walk(calls[0]) if isinstance(c, ast.Constant) and str(c.value).endswith(".py")]
    assert names == ["SegmentEditorEffect.py"]
    return ROOT / "SegmentEditorSAMMedLib" / names[0]


def test_setpythonsource_finds_the_effect_class_in_our_package(app_stubs):
    source = registered_source()
    import SegmentEditorSAMMedLib  # what registerSegmentEditorEffect does first

    module_name, class_name, found = slicer_effect_lookup(source)
    assert (module_name, class_name) == ("SegmentEditorSAMMedLib", "SegmentEditorEffect")
    assert found is SegmentEditorSAMMedLib.SegmentEditorEffect
    assert sys.modules[module_name] is SegmentEditorSAMMedLib and hasattr(SegmentEditorSAMMedLib, "__path__")


def test_without_the_import_slicer_would_load_the_file_over_the_package(app_stubs):
    _, _, found = slicer_effect_lookup(registered_source())
    assert found is None  # setPythonSource would then call loadSourceAsModule under the folder's name


def test_the_effect_folder_holds_only_the_effect():
    files = {p.name for p in (ROOT / "SegmentEditorSAMMedLib").iterdir() if p.name != "__pycache__"}
    assert files == {"__init__.py", "SegmentEditorEffect.py", "SegmentEditorEffect.png", "CMakeLists.txt"}


def test_after_registration_every_lib_and_both_modules_libraries_still_import(app_stubs):
    """Registration replayed as Slicer runs it (the effect's package imported, then looked up by its folder name):
    the libraries the modules use afterwards import as packages, not as the effect file (the bug of a shared
    folder, where ``loadSourceAsModule`` put the effect file in place of ``SAMMedAnnotatorLib``)."""
    import importlib

    import SegmentEditorSAMMedLib  # noqa: F401 - what registerSegmentEditorEffect does first

    slicer_effect_lookup(registered_source())
    for name in ("SAMMedLib", "SAMMedAnnotatorLib", "SAMMedAutoLib"):
        assert hasattr(importlib.import_module(name), "__path__"), f"{name} is not a package any more"
    for name in (
        "SAMMedLib.ModelSession",
        "SAMMedLib.SegmentIO",
        "SAMMedAnnotatorLib.Annotator",
        "SAMMedAutoLib.AutoReview",
    ):
        importlib.import_module(name)
