"""skillstore: compressed, versioned SkillPacks and forget-free continual learning for LLMs."""

__version__ = "0.1.0"
