"""Evaluation with simulated users: metrics, click simulation, protocols (interactive, SAMassist, propagation)."""
