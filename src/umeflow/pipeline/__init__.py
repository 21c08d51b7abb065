"""Orchestration glue for Kubeflow Pipelines: what the thin components in ``components/`` call.

- ``images``   pinned container images the components run in (overridable, refused when unpinned)
- ``staging``  where step outputs live (local path, PVC path or ``s3://``) and how a pod gets a local copy
- ``tasks``    one function per pipeline task: recipe + overrides + locations → ``umeflow.steps.<step>.run``
- ``trainjob`` multi-node training: a Kubeflow Trainer ``TrainJob`` built, validated, launched and followed
- ``kfp_client`` ``umeflow submit`` / ``umeflow schedule`` against a KFP API server
- ``local``    ``umeflow run-local``: the same pipeline on ``kfp.local`` (the embedded default)

No step logic lives here: every task ends in the step's own ``run(cfg)``.
"""
