"""SAMMed Auto's own MRML side: the propagate-review-accept cycle of one segment (no Qt)."""
