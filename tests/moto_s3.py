"""Pointing boto3 at the session's moto S3 server (fixture ``moto_endpoint`` in conftest)."""

from __future__ import annotations


S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def use_moto(monkeypatch, endpoint: str, bucket: str):
    """Point boto3 (through the environment only, as in production) at the moto server and make sure ``bucket``
    exists; returns the client."""
    from umeflow.storage import s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for key, value in S3_TEST_ENV.items():
        monkeypatch.setenv(key, value)
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    client = s3_client()
    if bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=bucket)
    return client
