"""SAMMedAuto helpers: MRML <-> numpy, the background propagation worker, the review/accept cycle (no Qt)."""
