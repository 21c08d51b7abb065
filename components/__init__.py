"""Thin KFP components, one module per step; see README.md. Logic lives in ``umeflow.pipeline.tasks`` / steps."""
