"""Sub-commands that drive whole pipelines: ``run-local``, ``compile``, ``upload``, ``submit``, ``schedule``.

Registered by ``umeflow.cli``; kept here so the step CLI stays about steps.
"""

from __future__ import annotations

import argparse
import json

COMMANDS = ("run-local", "compile", "upload", "submit", "schedule")
DEFAULT_PACKAGE = "pipelines/compiled/train_and_promote.yaml"


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML; sent as the `recipe` parameter (its text)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="recipe override for one step, e.g. sft.max_steps=2000 (repeatable)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="pipeline parameter, value parsed as YAML (e.g. eval_shards=8, "
                        "node_selector='{gpu: h100}') (repeatable)")
    p.add_argument("--pipeline", "--package", dest="package", default=DEFAULT_PACKAGE,
                   help=f"compiled pipeline (default {DEFAULT_PACKAGE})")
    p.add_argument("--experiment", default="umeflow", help="KFP experiment")
    p.add_argument("--host", help="KFP API endpoint (default: KFP_HOST; the token comes from KFP_TOKEN)")
    p.add_argument("--service-account", help="Kubernetes service account the run's pods use")


def add_commands(sub) -> None:
    local = sub.add_parser("run-local", help="train_and_promote on the KFP local runner (what `make run` does)")
    local.add_argument("--config", required=True, help="recipe YAML (e.g. configs/tiny.yaml)")
    local.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="recipe override for one step, e.g. sft.max_steps=2 (repeatable)")
    local.add_argument("--state", default=None, help="state dir (default: UMEFLOW_STATE or ./state)")
    local.add_argument("--eval-shards", type=int, default=2, help="evaluation fan-out (run one after another)")

    comp = sub.add_parser("compile", help="compile the pipelines to YAML (pipelines/compiled by default)")
    comp.add_argument("--out", default=None, help="output folder")

    up = sub.add_parser("upload", help="upload the compiled pipeline as a named pipeline version (idempotent)")
    up.add_argument("--pipeline", "--package", dest="package", default=DEFAULT_PACKAGE, help="compiled pipeline")
    up.add_argument("--name", default="umeflow-train-and-promote", help="pipeline name in KFP")
    up.add_argument("--host", help="KFP API endpoint (default: KFP_HOST)")

    submit = sub.add_parser("submit", help="create one run on a Kubeflow Pipelines cluster (kfp run create)")
    _run_args(submit)
    submit.add_argument("--run-name")
    submit.add_argument("--pipeline-root", help="artifact root for this run (e.g. s3://bucket/kfp)")

    sched = sub.add_parser("schedule", help="create/update the recurring retraining run (idempotent by name)")
    _run_args(sched)
    sched.add_argument("--name", default="umeflow-retrain", help="recurring run name (the idempotency key)")
    sched.add_argument("--cron", required=True, help="6 fields, seconds first: '0 0 3 * * 1' = Mondays 03:00")
    sched.add_argument("--max-concurrency", type=int, default=1)


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "run-local":
        from umeflow.config import state_dir
        from umeflow.pipeline.local import run_local
        from umeflow.vllm_support import refuse_missing_vllm

        refuse_missing_vllm(args.config, args.overrides)  # before any task: SFT would run, then GRPO fail
        out = run_local(args.config, args.overrides, args.state or state_dir(), args.eval_shards)
        if out["report"]:
            print(open(out["report"]).read())
        print(json.dumps(out, indent=1))
        return 0
    if args.command == "compile":
        from umeflow.pipeline.local import import_pipelines

        pipelines = import_pipelines()
        for path in pipelines.compile_all(args.out or pipelines.COMPILED_DIR):
            print(path)
        return 0
    from umeflow.pipeline import kfp_client

    if args.command == "upload":
        result = kfp_client.upload(args.package, args.name, kfp=kfp_client.client(args.host))
        print(f"{result.action} {result.pipeline_id} {result.version_name}")
        return 0
    arguments = kfp_client.pipeline_arguments(args.package, args.param, args.config, args.overrides)
    if args.command == "submit":
        run_id = kfp_client.submit(args.package, arguments, args.experiment, args.run_name,
                                   kfp=kfp_client.client(args.host), pipeline_root=args.pipeline_root,
                                   service_account=args.service_account)
        print(run_id)
        return 0
    if args.command == "schedule":
        result = kfp_client.schedule(args.package, args.name, args.cron, args.experiment, arguments,
                                     kfp=kfp_client.client(args.host), max_concurrency=args.max_concurrency,
                                     service_account=args.service_account)
        print(f"{result.action} {result.recurring_run_id}")
        return 0
    raise AssertionError(f"unhandled command {args.command}")
