"""The cloud half of SecDOOD personalisation: H on the device's selected channels.

The HyperNetwork is affine in its input (:mod:`shared.hypernet`), Θ = z_m·A + c,
and a masked channel contributes nothing, so the cloud only needs the rows of A
for the channels the device selected: ``Enc(Θ) = Enc(z[indices]) · A[indices] + c``
— one vector × plain-matrix product (one rotation per selected row, which is
why selecting a quarter of the channels costs about a quarter of the time).

The cloud holds only the device's *public* context (loaded from the registry
and cached, since a 35 MB context takes a while to parse); it can compute on the
ciphertext but cannot decrypt the input or the result. Plaintext mode runs the
same restricted map on numbers. Nothing here writes to the registry, so a
refused request leaves server state unchanged.
"""

from __future__ import annotations

import hashlib
import io
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import tenseal as ts
import torch

from server.registry import Registry
from server.registry.records import ModelRecord
from shared.channel_importance import channel_count, check_alpha, check_indices
from shared.he import chunk_bounds, ciphertext_from, load_public_context, output_chunk_size
from shared.hypernet import HyperNetworkConfig, hypernet_from_state
from shared.model_names import HYPERNETWORK

DEFAULT_HYPERNET = HYPERNETWORK
#: loaded public contexts kept in memory (each ≈ 100+ MB once parsed at N = 8192)
MAX_CACHED_CONTEXTS = 4
NO_CONTEXT = (
    "no public HE context for this device: upload your public context first (UploadContext)"
)


class MissingContextError(LookupError):
    """The device has not uploaded a public HE context (gRPC: FAILED_PRECONDITION)."""


@dataclass(frozen=True)
class FoldedHyperNet:
    """A registered H folded to its affine map: Θ = z_m·a + c (float64)."""

    record: ModelRecord
    config: HyperNetworkConfig
    a: np.ndarray  # [D, D·C + C]
    c: np.ndarray  # [D·C + C]


@dataclass(frozen=True)
class PersonalizeQuery:
    """One request, already out of protobuf. Exactly one of ``encrypted`` / ``plain`` is set."""

    alpha: float
    indices: np.ndarray | list[int]
    encrypted: bytes | None = None
    encrypted_sha256: str = ""
    plain: np.ndarray | None = None
    model_name: str = DEFAULT_HYPERNET
    model_version: int | None = None


@dataclass(frozen=True)
class PersonalizeAnswer:
    """Θ for the device: ciphertext chunks (encrypted mode) or the numbers (plaintext mode)."""

    hypernet: FoldedHyperNet
    theta_ciphertexts: list[bytes]
    theta_plain: np.ndarray | None
    he_seconds: float


def hypernet_from_artifact(data: bytes) -> torch.nn.Module:
    """Load H from a registry artifact: the job runner's method format or a bare H state."""
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"not a readable hypernetwork artifact: {error}") from None
    if isinstance(payload, dict) and payload.get("format") == "secdood-method":
        payload = payload.get("state")
    return hypernet_from_state(payload)


class PersonalizationService:
    """Evaluates registered HyperNetworks for enrolled devices; caches models and contexts."""

    def __init__(self, registry: Registry, max_cached_contexts: int = MAX_CACHED_CONTEXTS) -> None:
        self._registry = registry
        self._max_contexts = max_cached_contexts
        self._hypernets: dict[str, FoldedHyperNet] = {}
        self._contexts: OrderedDict[tuple[str, str], ts.Context] = OrderedDict()
        self._lock = threading.Lock()

    def hypernet(self, name: str = DEFAULT_HYPERNET, version: int | None = None) -> FoldedHyperNet:
        """The folded H ``name`` (``version=None``: latest), cached by artifact sha256."""
        record = self._registry.get_model(name or DEFAULT_HYPERNET, version)
        with self._lock:
            cached = self._hypernets.get(record.artifact_sha256)
        if cached is not None:
            return cached
        model = hypernet_from_artifact(self._registry.artifacts.read_bytes(record.artifact_sha256))
        a, c = model.affine_map()
        folded = FoldedHyperNet(record, model.config, a.numpy(), c.numpy())
        with self._lock:
            self._hypernets[record.artifact_sha256] = folded
        return folded

    def device_context(self, device_id: str) -> ts.Context:
        """The device's current public context, parsed once and kept in a small LRU cache."""
        record = self._registry.current_context(device_id)
        if record is None:
            raise MissingContextError(NO_CONTEXT)
        key = (device_id, record.artifact_sha256)
        with self._lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                return self._contexts[key]
        context = load_public_context(self._registry.artifacts.read_bytes(record.artifact_sha256))
        with self._lock:
            self._contexts[key] = context
            while len(self._contexts) > self._max_contexts:
                self._contexts.popitem(last=False)
        return context

    def personalize(self, device_id: str, query: PersonalizeQuery) -> PersonalizeAnswer:
        """Validate ``query`` and compute Θ = z[indices]·A[indices] + c (encrypted or plain).

        Raises ValueError/TypeError (→ INVALID_ARGUMENT) for bad input,
        MissingContextError when the device has no context, NotFoundError without H.
        """
        hypernet = self.hypernet(query.model_name, query.model_version)
        d = hypernet.config.embed_dim
        alpha = check_alpha(query.alpha)
        indices = check_indices(query.indices, d)
        if indices.size != channel_count(alpha, d):
            raise ValueError(
                f"alpha {alpha} selects {channel_count(alpha, d)} of {d} channels, but "
                f"{indices.size} indices were sent"
            )
        rows, offset = hypernet.a[indices], hypernet.c
        if (query.encrypted is None) == (query.plain is None):
            raise ValueError("send exactly one of an encrypted or a plain embedding")
        if query.plain is not None:
            return self._plain(hypernet, rows, offset, query.plain)
        return self._encrypted(device_id, hypernet, rows, offset, query)

    def _plain(
        self, hypernet: FoldedHyperNet, rows: np.ndarray, offset: np.ndarray, plain: np.ndarray
    ) -> PersonalizeAnswer:
        values = np.asarray(plain, dtype=np.float64)
        if values.shape != (rows.shape[0],):
            raise ValueError(f"plain embedding must hold {rows.shape[0]} values, got {values.size}")
        if not np.isfinite(values).all():
            raise ValueError("plain embedding contains NaN or infinite values")
        start = time.perf_counter()
        theta = values @ rows + offset
        return PersonalizeAnswer(hypernet, [], theta, time.perf_counter() - start)

    def _encrypted(
        self,
        device_id: str,
        hypernet: FoldedHyperNet,
        rows: np.ndarray,
        offset: np.ndarray,
        query: PersonalizeQuery,
    ) -> PersonalizeAnswer:
        data = query.encrypted or b""
        if hashlib.sha256(data).hexdigest() != query.encrypted_sha256:
            raise ValueError(
                "encrypted embedding does not match encrypted_sha256 (corrupted or tampered "
                "in transit); send the sha256 hex of the exact ciphertext bytes"
            )
        context = self.device_context(device_id)
        start = time.perf_counter()
        vector = ciphertext_from(context, data)
        if vector.size() != rows.shape[0]:
            raise ValueError(
                f"ciphertext holds {vector.size()} values but {rows.shape[0]} indices were sent"
            )
        chunks = []
        try:
            for low, high in chunk_bounds(offset.size, output_chunk_size(context, vector.size())):
                result = vector.matmul(rows[:, low:high].tolist()) + offset[low:high].tolist()
                chunks.append(result.serialize())
        except (ValueError, RuntimeError) as error:  # SEAL: e.g. wrong parameters or level
            raise ValueError(f"cannot evaluate H on this ciphertext: {error}") from None
        return PersonalizeAnswer(hypernet, chunks, None, time.perf_counter() - start)
