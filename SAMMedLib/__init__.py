"""Slicer-side code both SAMMed modules and the Segment Editor effect use.

``VolumeAccess`` (MRML volumes <-> numpy, RAS <-> IJK <-> slice pixels), ``SegmentIO`` (segments <-> numpy and the
one write function), ``Dependencies`` (packages, licences, downloads), ``ModelSession`` (the shared model,
embeddings and background worker). MRML, vtk, numpy and ``sammed`` only; no Qt.
"""
