"""What every ``secdood-device`` command shares: the error type, the client, model paths."""

from __future__ import annotations

import argparse
from pathlib import Path

from device_client.gateway_client import GatewayClient
from device_client.state import DeviceIdentity, DeviceState
from shared.embedding_adaptation import DEFAULT as DEFAULT_EMBEDDING
from shared.embedding_adaptation import PLAIN, EmbeddingAdaptation
from shared.model_names import BASE_MODEL

PROG = "secdood-device"
DEFAULT_MODEL = BASE_MODEL
EXIT_USER_ERROR = 2


class CliError(Exception):
    """A failure to report as one line (no traceback) with exit code 2."""


def connect(state: DeviceState) -> tuple[GatewayClient, DeviceIdentity]:
    identity = state.load_identity()
    client = GatewayClient(identity.server, token=state.load_token(), root_cert=identity.root_cert)
    return client, identity


def model_path(args: argparse.Namespace, state: DeviceState) -> Path:
    variant = model_variant(args)
    model_path = Path(args.model) if args.model else state.model_path(DEFAULT_MODEL, variant)
    if not model_path.is_file():
        hint = f" --variant {variant}" if variant != "float" else ""
        raise CliError(
            f"no model at {model_path}; run `{PROG} download{hint}` first (or pass --model FILE)"
        )
    return model_path


def model_variant(args) -> str:
    return "int8" if getattr(args, "int8", False) else args.variant


def personal_embedding(adapt: str | None) -> EmbeddingAdaptation:
    """The embeddings a personalising device sends: H's default kind (LeanTTA, so ``None``
    and ``leantta`` give it), or plain ones with ``--adapt none`` (for an H trained on
    plain embeddings). Zeroth-order updates would move the embeddings H reads: refused."""
    if adapt == "zo":
        raise CliError(
            "--personalize cannot run with --adapt zo: zeroth-order updates change the "
            f"embeddings the HyperNetwork reads; use leantta ({DEFAULT_EMBEDDING.describe()}, "
            "the default) or none"
        )
    return PLAIN if adapt == "none" else DEFAULT_EMBEDDING
