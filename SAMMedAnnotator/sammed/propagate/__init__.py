"""SAMauto volume generators: sliding window (Slide-SAM), threshold propagation, SAP-Net; stop rules."""
