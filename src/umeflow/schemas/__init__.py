"""Vendored JSON Schemas (see each file's $comment for provenance)."""
