"""Slicer-side code both SAMMed modules and the Segment Editor effect use.

``VolumeAccess`` (MRML volumes <-> numpy, RAS <-> IJK <-> slice pixels), ``SegmentIO`` (segments <-> numpy and the
one write function), ``Dependencies`` (packages, licences, downloads), ``ModelSession`` (the shared model,
embeddings and background worker), ``ComputeSettings`` (this computer or a ``sammed serve`` server). MRML, vtk,
numpy and ``sammed`` only; no Qt, but for ``ComputeOnSection``, the "Compute on" widget both modules show.
"""
