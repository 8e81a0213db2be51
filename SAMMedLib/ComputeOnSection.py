"""The "Compute on" section both SAMMed modules show: this computer, or a ``sammed serve`` server URL + token.

The one Qt file of ``SAMMedLib`` (a widget both modules build the same way). The choice is saved by
``ComputeSettings`` (an application setting with the token, never in the scene) and applied to the shared
``ModelSession`` with ``computeOn``; the status line says where the work runs (the server's model and device).
"""

from __future__ import annotations

from collections.abc import Callable

import ctk
import qt

from . import ComputeSettings


class ComputeOnSection:
    """A collapsed "Compute on" section: server URL (empty: this computer), token, Connect, status.

    Args:
        session: returns the ``ModelSession`` to switch (the shared one).
        onStatus: shows a message in the module's status line.
    """

    def __init__(self, session: Callable, onStatus: Callable[[str], None]) -> None:
        self.session, self.onStatus = session, onStatus
        # a ctkCollapsibleButton holding a QFormLayout, as Slicer's own scripted widgets build one in Python
        # (Applications/SlicerApp/Testing/Python/RSNAQuantTutorialTest.py: qt.QFormLayout(collapsibleButton))
        self.widget = ctk.ctkCollapsibleButton()
        self.widget.text = "Compute on"
        self.widget.collapsed = True
        form = qt.QFormLayout(self.widget)
        self.urlEdit = qt.QLineEdit()
        self.urlEdit.placeholderText = "this computer (empty), or a sammed serve server: https://gpu-server:8000"
        self.urlEdit.toolTip = "Where the model runs. A server does the work for many Slicers (docs/server.md)."
        self.tokenEdit = qt.QLineEdit()
        self.tokenEdit.setEchoMode(qt.QLineEdit.Password)
        self.tokenEdit.placeholderText = "the server's token (kept with your settings, not in the scene)"
        self.connectButton = qt.QPushButton("Use")
        self.statusLabel = qt.QLabel("")
        self.statusLabel.wordWrap = True
        form.addRow("Server:", self.urlEdit)
        form.addRow("Token:", self.tokenEdit)
        form.addRow(self.connectButton)
        form.addRow(self.statusLabel)
        current = self.session()  # made first: it sets SAMMed's folder (where the choice is kept) in the app
        self.urlEdit.text = current.serverURL
        self.connectButton.connect("clicked(bool)", self.onUse)
        self.statusLabel.text = (
            current.describe() if not current.serverURL else f"Server {current.serverURL} (Use checks it)"
        )

    def onUse(self) -> None:
        """Save the choice and switch the shared session to it; the status line shows the server's answer."""
        try:
            url = ComputeSettings.save(self.urlEdit.text, self.tokenEdit.text)
        except ValueError as exc:
            self.statusLabel.text = str(exc)
            return
        _url, token = ComputeSettings.load()
        session = self.session()
        session.computeOn(url, token)
        self.tokenEdit.text = ""
        self.statusLabel.text = session.describe()
        self.onStatus(self.statusLabel.text)
