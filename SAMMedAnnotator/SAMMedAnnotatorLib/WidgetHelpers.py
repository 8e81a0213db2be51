"""Qt helpers of the annotator's widget (Slicer application only): debounced preview on prompt changes, and
keyboard shortcuts that live only while the module is shown."""

from __future__ import annotations

from collections.abc import Callable

import qt
import slicer

PROMPT_EVENTS = (
    slicer.vtkMRMLMarkupsNode.PointAddedEvent,
    slicer.vtkMRMLMarkupsNode.PointRemovedEvent,
    slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent,
    slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent,
)


class PromptWatcher:
    """Observes the prompt markups nodes; after a change (and ``delayMs`` of quiet) calls ``onChange`` once.

    The debounce ``QTimer``, the re-entrancy guard and the ``try/finally`` follow Slicer's
    ``AbstractScriptedSegmentEditorAutoCompleteEffect.py`` preview. ``lastNode`` is the node changed last (its view
    is the slice the user is working on).
    """

    def __init__(self, onChange: Callable[[], None], delayMs: int) -> None:
        self.onChange = onChange
        self.lastNode = None
        self.enabled = True
        self._observed: list[tuple[object, int]] = []
        self._running = False
        self.timer = qt.QTimer()
        self.timer.setSingleShot(True)
        self.timer.setInterval(delayMs)
        self.timer.connect("timeout()", self._fire)

    def watch(self, nodes) -> None:
        """Observe these nodes (None entries are skipped) instead of the earlier ones."""
        nodes = [n for n in nodes if n is not None]
        if nodes == [node for node, _ in self._observed[:: len(PROMPT_EVENTS)]]:
            return
        self.stop()
        for node in nodes:
            for event in PROMPT_EVENTS:
                self._observed.append((node, node.AddObserver(event, self._changed)))

    def stop(self) -> None:
        """Stop observing and cancel a pending call."""
        for node, tag in self._observed:
            node.RemoveObserver(tag)
        self._observed = []
        self.timer.stop()

    def _changed(self, caller, event) -> None:
        self.lastNode = caller
        if self.enabled:
            self.timer.start()  # restarts on every change

    def _fire(self) -> None:
        if self._running:
            return
        self._running = True
        try:
            self.onChange()
        finally:
            self._running = False


class Shortcuts:
    """Application-wide keyboard shortcuts, installed while the module is shown and removed when it is left."""

    def __init__(self, bindings: list[tuple[str, Callable[[], None]]]) -> None:
        self.bindings = bindings
        self._shortcuts: list = []

    def install(self) -> None:
        if self._shortcuts:
            return
        window = slicer.util.mainWindow()
        for keys, slot in self.bindings:
            shortcut = qt.QShortcut(qt.QKeySequence(keys), window)
            shortcut.connect("activated()", slot)
            self._shortcuts.append(shortcut)

    def remove(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.disconnect("activated()")
            shortcut.setParent(None)
        self._shortcuts = []
