"""Synthetic skills, their JSONL splits, checkers, lm-eval task YAML and dataset validation."""

# Kept import-light on purpose: `skillstore skill add` imports validate without torch-heavy modules.
