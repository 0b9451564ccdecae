"""Checking that an uploaded HE context is a *public* TenSEAL CKKS context.

The cloud computes on a device's ciphertexts with the device's public material
(public key, Galois and relinearisation keys) and must never hold its secret
key: a context that can decrypt is refused and never stored.
"""

from __future__ import annotations

import grpc

from server.ckks_matmul import EvaluationKeys, PrivateContextError
from server.gateway.errors import GatewayError

PRIVATE_CONTEXT = "context contains a secret key; upload only the public context"


def check_public_ckks_context(data: bytes | bytearray) -> EvaluationKeys:
    """Parse ``data`` as a public CKKS context, else raise ``INVALID_ARGUMENT``.

    ``data`` is what ``ctx.serialize()`` returns on the device after
    ``ctx.make_context_public()``. The parsed keys are returned so that the
    context is parsed once, at upload, and kept for the device's requests.
    """
    try:
        return EvaluationKeys.from_public_context(data)
    except PrivateContextError:
        raise GatewayError(grpc.StatusCode.INVALID_ARGUMENT, PRIVATE_CONTEXT) from None
    except ValueError as error:
        raise GatewayError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"{error}; send ctx.serialize() after ctx.make_context_public()",
        ) from None
