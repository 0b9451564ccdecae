"""Personalize requests that upload the device's public CKKS context when the cloud needs it.

The rule (docs/device.md): ask first; upload the public context and retry once when
the cloud answers FAILED_PRECONDITION (it has no context of this device, or lost
it) or cannot parse the ciphertext under the context it holds; upload before the
request when the cloud holds a context of this device's *older* keys (it would
compute on the ciphertext under the wrong key). Asking first means a refused
request (e.g. no HyperNetwork in the cloud) uploads nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from device_client.gateway_client import (
    GatewayClient,
    GatewayClientError,
    PersonalizeReply,
    ServerUnreachableError,
)
from shared.he import FOREIGN_CIPHERTEXT

if TYPE_CHECKING:
    from device_client.keyring import DeviceKeyring


class UploadingTransport:
    """Carries Personalize requests; uploads the public context when the cloud needs it.

    Retries a request once after uploading when the cloud says it has no context
    for this device (FAILED_PRECONDITION) or holds one it cannot parse the
    ciphertext under; uploads first when it holds a context of older keys.
    """

    def __init__(
        self, keyring: DeviceKeyring, client: GatewayClient | None, server: str, device_id: str
    ) -> None:
        self.keyring = keyring
        self.client = client
        self.server = server
        self.device_id = device_id
        self.uploads = 0

    def personalize(
        self,
        alpha: float,
        indices: list[int],
        encrypted: bytes | None = None,
        plain: list[float] | None = None,
        familiarity_sha256: str = "",
        embedding_kind: str = "none",
    ) -> PersonalizeReply:
        if self.client is None:
            raise ServerUnreachableError("offline: no connection to the cloud")
        if encrypted is not None and self.keyring.upload_outdated(self.server, self.device_id):
            self._upload()
        client = self.client

        def send() -> PersonalizeReply:
            return client.personalize(
                alpha, indices, encrypted=encrypted, plain=plain,
                familiarity_sha256=familiarity_sha256, embedding_kind=embedding_kind,
            )  # fmt: skip

        try:
            return send()
        except GatewayClientError as error:
            if encrypted is None or not _context_lost(error):
                raise
        # The cloud has no context of ours (first use, or it lost it) or holds another one:
        # upload once, retry. Asking first: a refusal (e.g. no HyperNetwork) uploads nothing.
        self._upload()
        return send()

    def _upload(self) -> None:
        assert self.client is not None
        self.keyring.upload(self.client, self.server, self.device_id)
        self.uploads += 1


def _context_lost(error: GatewayClientError) -> bool:
    if error.code == grpc.StatusCode.FAILED_PRECONDITION:
        return True
    return error.code == grpc.StatusCode.INVALID_ARGUMENT and FOREIGN_CIPHERTEXT in str(error)
