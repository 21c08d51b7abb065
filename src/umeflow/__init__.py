"""umeflow: a reproducible pipeline for reasoning-driven multimodal embedding models (UME-R1, Embed-RL)."""

__version__ = "0.1.0"
