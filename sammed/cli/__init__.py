"""The ``sammed`` command line: ``main`` + shared options (``options.py``), one file per command.

A user error (``ValueError``) prints one line to stderr and exits with code 2; a cancel exits with 3.
"""

from .main import main

__all__ = ["main"]
