"""Checking that an uploaded HE context is a *public* TenSEAL CKKS context.

The cloud computes on a device's ciphertexts with the device's public material
(public key, Galois and relinearisation keys) and must never hold its secret
key: a context that can decrypt is refused and never stored.
"""

from __future__ import annotations

import grpc
import tenseal

from server.gateway.errors import GatewayError

PRIVATE_CONTEXT = "context contains a secret key; upload only the public context"


def check_public_ckks_context(data: bytes | bytearray) -> None:
    """Raise :class:`GatewayError` (``INVALID_ARGUMENT``) unless ``data`` is a public CKKS context.

    ``data`` is what ``ctx.serialize()`` returns on the device after
    ``ctx.make_context_public()``.
    """
    try:
        context = tenseal.context_from(data)
    except Exception as error:  # TenSEAL raises ValueError/RuntimeError for bad bytes
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"not a serialised TenSEAL context ({error}); send ctx.serialize() after "
            "ctx.make_context_public()",
        ) from None
    if context.is_private():
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, PRIVATE_CONTEXT)
    scheme = context.seal_context().data.key_context_data().parms().scheme()
    if scheme.name != "CKKS":
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"context uses the {scheme.name} scheme; SecDOOD needs a CKKS context",
        )
