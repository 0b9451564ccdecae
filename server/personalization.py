"""The cloud half of SecDOOD personalisation: H on the device's selected channels.

The HyperNetwork is affine in its input (:mod:`shared.hypernet`), Θ = x·A + c with
x = m ⊙ (u − r), and an unselected channel contributes nothing, so the cloud only needs
the rows of A for the channels the device selected:
``Enc(Θ) = Enc(u[indices]) · A[indices] + (c − r[indices]·A[indices])``
(:func:`shared.hypernet.restricted_map`) — one vector × plain-matrix product (one
rotation per selected row, which is why selecting a quarter of the channels costs about
a quarter of the time).

The cloud holds only the device's *public* context (loaded from the registry
and cached, since a 35 MB context takes a while to parse; the cache is bounded
by memory, not by count); it can compute on the
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
from shared.hypernet import HyperNetworkConfig, hypernet_from_state, restricted_map
from shared.model_names import HYPERNETWORK

DEFAULT_HYPERNET = HYPERNETWORK
#: memory for parsed public contexts; a parsed context takes about its serialised size
#: (measured: 31 MB parsed for a 35 MB context at N = 8192, so the estimate errs high)
DEFAULT_CONTEXT_CACHE_BYTES = 1024 * 1024 * 1024
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
    reference: np.ndarray  # [D]: the value an unselected channel stands for


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

    def __init__(
        self, registry: Registry, context_cache_bytes: int = DEFAULT_CONTEXT_CACHE_BYTES
    ) -> None:
        self._registry = registry
        self._cache_bytes = context_cache_bytes
        self._hypernets: dict[str, FoldedHyperNet] = {}
        # (device, sha256) -> (parsed context, its size estimate in bytes), least recent first
        self._contexts: OrderedDict[tuple[str, str], tuple[ts.Context, int]] = OrderedDict()
        self._cached_bytes = 0
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
        reference = model.reference.double().numpy()
        folded = FoldedHyperNet(record, model.config, a.numpy(), c.numpy(), reference)
        with self._lock:
            self._hypernets[record.artifact_sha256] = folded
        return folded

    def device_context(self, device_id: str) -> ts.Context:
        """The device's current public context, parsed once and kept in an LRU cache.

        The cache holds at most ``context_cache_bytes`` of parsed contexts (each
        estimated by its serialised size); the least recently used leave first.
        """
        record = self._registry.current_context(device_id)
        if record is None:
            raise MissingContextError(NO_CONTEXT)
        key = (device_id, record.artifact_sha256)
        with self._lock:
            if key in self._contexts:
                self._contexts.move_to_end(key)
                return self._contexts[key][0]
        context = load_public_context(self._registry.artifacts.read_bytes(record.artifact_sha256))
        with self._lock:
            if key not in self._contexts:
                self._contexts[key] = (context, record.size_bytes)
                self._cached_bytes += record.size_bytes
            while self._cached_bytes > self._cache_bytes and len(self._contexts) > 1:
                _, (_, size) = self._contexts.popitem(last=False)
                self._cached_bytes -= size
        return context

    def cached_context_bytes(self) -> int:
        """Estimated memory held by cached contexts (at most the budget, or one context)."""
        with self._lock:
            return self._cached_bytes

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
        rows, offset = restricted_map(hypernet.a, hypernet.c, hypernet.reference, indices)
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
