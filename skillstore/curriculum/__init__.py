"""Synthetic skills and their prompt templates, JSONL splits, checkers, lm-eval task YAML,
router evaluation rows and dataset validation."""

# Kept import-light on purpose: `skillstore skill add` imports validate without torch-heavy modules.
