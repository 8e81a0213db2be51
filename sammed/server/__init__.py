"""``sammed serve``: the worker protocol over HTTP (``app``), one worker shared by a department's clients."""
