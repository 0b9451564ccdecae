"""``secdood-server``: train, evaluate, serve and export from one command.

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

from server.methods.catalog import UnknownMethodError, method_names
from server.settings import Settings

BASE_MODEL = "secdood_base"


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


def open_registry(settings: Settings):
    """The registry for these settings (database + artifact store under data_dir)."""
    from server.registry import open_registry as _open

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return _open(settings.database_url, settings.data_dir)


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    from server.jobs import JobRunner, console_progress
    from server.methods.catalog import validate_config

    config = json.loads(args.config) if args.config else {}
    config.update(_parse_sets(args.set))
    parsed = validate_config(args.method, config)  # a bad config fails before any progress bar
    registry = open_registry(settings)
    if int(os.environ.get("RANK", "0")) > 0:
        # A torchrun worker (docs/scaling.md): trains alongside rank 0, which alone records
        # the job and registers the model.
        from server.methods.catalog import get_trainer

        trainer = get_trainer(args.method)
        if getattr(trainer, "needs_registry", False):
            trainer.registry = registry  # type: ignore[attr-defined]
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


def load_registered_bundle(
    settings: Settings,
    name: str = BASE_MODEL,
    version: int | None = None,
    train_if_missing: bool = False,
):
    """``(record, bundle)`` of a registered base model.

    NotFoundError when it is absent, unless ``train_if_missing`` (then the
    default config is trained first, with a progress bar).
    """
    from server.jobs import ensure_model
    from shared.models.checkpoint import bundle_from_bytes

    with open_registry(settings) as registry:
        if train_if_missing and version is None:
            record = ensure_model(registry, name)
        else:
            record = registry.get_model(name, version=version)
        return record, bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))


def cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from server.evaluation import evaluate, format_report

    record, bundle = load_registered_bundle(settings, args.model, args.version)
    report = evaluate(bundle, shift_clips=args.shift_clips)
    report["model"] = {"name": record.name, "version": record.version}
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def cmd_methods(args: argparse.Namespace, settings: Settings) -> int:
    for name in method_names():
        print(name)
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from server.app import serve

    serve(settings)
    return 0


def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    from server.export import export_latest_int8

    if not args.int8:
        raise ValueError("choose an export format: --int8")
    record = export_latest_int8(open_registry(settings), args.model, args.calibration_clips)
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
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a base model: accuracy, OOD, device shift")
    ev.add_argument("--model", default=BASE_MODEL)
    ev.add_argument("--version", type=int, default=None, help="default: the latest")
    ev.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    ev.add_argument("--shift-clips", type=int, default=300, help="test clips per corrupted set")
    ev.set_defaults(func=cmd_eval)

    methods = sub.add_parser("methods", help="list the trainable methods")
    methods.set_defaults(func=cmd_methods)

    export = sub.add_parser("export", help="export the latest base model for devices")
    export.add_argument("--int8", action="store_true", help="int8 artifact, variant 'int8'")
    export.add_argument("--model", default=BASE_MODEL)
    export.add_argument("--calibration-clips", type=int, default=256)
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="start the gRPC gateway and the REST API")
    serve.set_defaults(func=cmd_serve)
    return parser


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
