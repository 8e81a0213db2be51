"""The SAMMed worker: model work in a process of its own, driven by messages.

The Slicer modules (and, later, a shared server) never run the model in their own process: they start one
long-lived worker (``python -m sammed.worker``), which holds the model, the embedding cache, the volumes and the
learned prompt encoders, and talk to it with the messages of ``protocol`` through ``client.WorkerClient``. A crash
in model code ends the worker, not the application; the client reports it and starts a new one on the next request.

- ``protocol``: message format, versions, arrays beside the JSON.
- ``ops``: what a worker can do (``open_volume``, ``segment``, ``precompute``, ``learn``, ``propagate``, ...).
- ``server``: interactive and background lanes, cancellation, error replies.
- ``process``: the process entry point (stdin/stdout).
- ``client``: ``WorkerClient`` (start, send, poll without blocking, restart) and ``RemoteSegmenter``.
"""
