"""Annotation for UME-R1 cold-start SFT: per-side reasoning + summary (``grounded`` offline or an OpenAI-compatible
MLLM endpoint), a resumable response cache, and UME-R1's filters. The step is ``umeflow.steps.annotate``."""
