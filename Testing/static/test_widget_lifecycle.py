"""Static checks of the modules' widget life cycle (the widgets need the Slicer application, so their methods are
read, not run): after exit() no timer of the annotator calls into a widget without a parameter node; cleanup()
disconnects the GUI from the parameter node; a parameter node observer is removed in one place only."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _method(module: str, cls: str, name: str) -> ast.FunctionDef:
    tree = ast.parse((ROOT / module / f"{module}.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == name:
                    return item
    raise AssertionError(f"{module}.{cls}.{name} not found")


def _calls(function: ast.FunctionDef) -> list[str]:
    return [ast.unparse(n) for n in ast.walk(function) if isinstance(n, ast.Call)]


def test_annotator_exit_stops_its_poll_timer_and_enter_restarts_it():
    assert "self.pollTimer.stop()" in _calls(_method("SAMMedAnnotator", "SAMMedAnnotatorWidget", "exit"))
    assert "self.pollTimer.start()" in _calls(_method("SAMMedAnnotator", "SAMMedAnnotatorWidget", "enter"))


def test_cleanup_and_exit_disconnect_the_gui_through_set_parameter_node():
    for module in ("SAMMedAnnotator", "SAMMedAuto"):
        for name in ("cleanup", "exit"):
            calls = _calls(_method(module, f"{module}Widget", name))
            assert "self.setParameterNode(None)" in calls, f"{module}Widget.{name}"
            assert not any("disconnectGui" in c or "removeObserver(self._parameterNode" in c for c in calls), (
                f"{module}Widget.{name} removes the parameter node observer itself (setParameterNode does it)"
            )


def test_no_module_tests_get_module_logic_for_none():
    # slicer.util.getModuleLogic raises for a missing module instead of returning None (Base/Python/slicer/util.py)
    for path in ROOT.glob("SAMMed*/**/*.py"):
        assert "getModuleLogic(" not in path.read_text(encoding="utf-8"), path


def test_both_modules_show_the_compute_on_section_on_the_shared_session():
    for module, logic in (("SAMMedAnnotator", "SAMMedAnnotatorLogic"), ("SAMMedAuto", "SAMMedAutoLogic")):
        calls = _calls(_method(module, f"{module}Widget", "setup"))
        assert "ComputeOnSection(lambda: self.logic.session, self.ui.statusLabel.setText)" in calls, module
        assert "self.layout.addWidget(self.computeOnSection.widget)" in calls, module
        assert _method(module, logic, "session") is not None
