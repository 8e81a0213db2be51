"""The SAMMed Segment Editor effect, alone in its folder.

Slicer loads an effect file as a Python module named after its folder (``qSlicerSegmentEditorScriptedEffect::
setPythonSource`` in ``Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx``, then
``qSlicerScriptedUtils::loadSourceAsModule`` puts it into ``sys.modules`` under that name), so nothing else may
live here. As in SegmentEditorExtraEffects, the package exports the effect class, and SAMMed Annotator imports
the package before registering, so ``setPythonSource`` finds the class in ``sys.modules`` and does not replace
the package.
"""

from .SegmentEditorEffect import SegmentEditorEffect

__all__ = ["SegmentEditorEffect"]
