"""secdood-server: train, evaluate, serve and export from one command.

A leaf: it parses arguments and calls the library (the registry, the job
runner, the evaluation, the service); nothing imports it but the console entry point.

Examples::

    secdood-server train                       # the default base model
    secdood-server train --method zil --set epochs=5
    secdood-server eval --json
    secdood-server serve
    secdood-server export --int8                # int8 variant of the latest base model
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from server.registry import open_registry
from server.settings import Settings
from server.training.catalog import UnknownMethodError, method_names, method_summary
from shared.model_names import BASE_MODEL, DIFFUSION_MODEL


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """``--set key=value`` pairs; values are parsed as JSON when they can be."""
    config: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        try:
            config[key] = json.loads(raw)
        except json.JSONDecodeError:
            config[key] = raw
    return config


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from server.jobs import JobRunner, console_progress
    from server.training.catalog import validate_config

    config = json.loads(args.config) if args.config else {}
    config.update(_parse_sets(args.set))
    parsed = validate_config(args.method, config)  # a bad config fails before any progress bar
    with open_registry(settings.database_url, settings.data_dir) as registry:
        if int(os.environ.get("RANK", "0")) > 0:
            # A torchrun worker (docs/scaling.md): trains alongside rank 0, which alone
            # records the job and registers the model.
            from server.training.catalog import get_trainer

            trainer = get_trainer(args.method)
            if getattr(trainer, "needs_registry", False):  # explicit, as in the job runner
                trainer.train(parsed, registry=registry)
            else:
                trainer.train(parsed)
            return 0
        runner = JobRunner(registry)
        job, model = runner.run(args.method, config, progress=console_progress(args.method))
    print(
        json.dumps(
            {"job": job.id, "model": model.name, "version": model.version, "metrics": model.metrics}
        )
    )
    return 0


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from server.evaluation import evaluate, format_report
    from server.registry.bundles import load_registered_bundle

    record, bundle = load_registered_bundle(settings, args.model, args.version)
    report = evaluate(bundle, shift_clips=args.shift_clips)
    report["model"] = {"name": record.name, "version": record.version}
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_methods(args: argparse.Namespace, settings: Settings) -> int:
    names = method_names()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {method_summary(name)}".rstrip())
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.app import serve

    overrides = {
        name: getattr(args, name)
        for name in ("host", "grpc_port", "rest_port", "data_dir")
        if getattr(args, name) is not None
    }
    # Validate the overrides exactly as the environment would be (ports in range, ...).
    serve(Settings.model_validate(settings.model_dump() | overrides))
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from server.export import export_latest_int8

    if not args.int8:
        raise ValueError("choose an export format: --int8")
    with open_registry(settings.database_url, settings.data_dir) as registry:
        if args.model == DIFFUSION_MODEL:  # the diffusion denoiser has its own int8 format
            from server.training.diffusion import export_int8 as export_diffusion_int8

            record = export_diffusion_int8(registry, args.model)
        else:
            record = export_latest_int8(registry, args.model, args.calibration_clips)
    print(
        json.dumps(
            {"model": record.name, "version": record.version, "variant": record.variant}
            | {"size_bytes": record.size_bytes, "sha256": record.artifact_sha256}
        )
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="secdood-server", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a method and register its artifact")
    train.add_argument("--method", default=BASE_MODEL, help=f"one of: {', '.join(method_names())}")
    train.add_argument("--config", help="the method's config as a JSON object")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one config field (repeatable; values parsed as JSON when they can be), "
        "e.g. --set epochs=5",
    )
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a base model: accuracy, OOD, device shift")
    ev.add_argument("--model", default=BASE_MODEL)
    ev.add_argument("--version", type=int, default=None, help="default: the latest")
    ev.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    ev.add_argument("--shift-clips", type=int, default=300, help="test clips per corrupted set")
    ev.set_defaults(func=cmd_eval)

    methods = sub.add_parser("methods", help="list the trainable methods")
    methods.set_defaults(func=cmd_methods)

    export = sub.add_parser(
        "export", help="export the latest base (or diffusion) model for devices"
    )
    export.add_argument("--int8", action="store_true", help="int8 artifact, variant 'int8'")
    export.add_argument("--model", default=BASE_MODEL)
    export.add_argument("--calibration-clips", type=int, default=256)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser(
        "serve",
        help="start the gRPC gateway and the REST API",
        description="Start the gRPC device gateway and the REST API in one process.\nEvery "
        "setting is read from a SECDOOD_* environment variable; the options below\noverride "
        "the most common ones.",
        epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", help="address both servers bind to (SECDOOD_HOST)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port (SECDOOD_GRPC_PORT)")
    serve.add_argument("--rest-port", type=int, help="REST port (SECDOOD_REST_PORT)")
    serve.add_argument("--data-dir", help="registry and artifacts (SECDOOD_DATA_DIR)")
    serve.set_defaults(func=cmd_serve)
    return parser


def settings_help() -> str:
    """The SECDOOD_* settings with their defaults, for ``serve --help``."""
    lines = [
        "settings (environment variables; see docs/operations.md). Unset keys are generated",
        "on first start into $SECDOOD_DATA_DIR/keys.json (mode 0600).",
    ]
    for name, field in Settings.model_fields.items():
        default = "unset" if field.default is None else field.default
        what = f" — {field.description}" if field.description else ""
        lines.append(f"  SECDOOD_{name.upper():<18} default {default}{what}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # migrations are routine; their chatter is debug output
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = Settings()
        return args.func(args, settings)
    except (ValueError, UnknownMethodError, FileNotFoundError, KeyError, ConnectionError) as exc:
        # User errors: one clear line, no traceback.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"secdood-server: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
