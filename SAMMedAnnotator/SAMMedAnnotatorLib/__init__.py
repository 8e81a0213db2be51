"""SAMMed Annotator's own MRML side: prompts from markups, preview, writes, SAMassist in the background (no Qt)."""
