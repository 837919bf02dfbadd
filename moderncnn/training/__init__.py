"""Training from YAML configs: the LightningModule, the CLI, its callbacks and plots."""

from __future__ import annotations

from .module import ImageClassifier

__all__ = ["ImageClassifier"]
