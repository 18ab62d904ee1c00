"""Evaluation: the literature's metrics on pinned backbones (DESIGN.md § Evaluation)."""
