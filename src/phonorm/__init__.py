"""phonorm: how fine-tuning normalizes self-supervised speech models, layer by layer."""

__version__ = "0.1.0"
