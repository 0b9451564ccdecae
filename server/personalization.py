"""The cloud half of SecDOOD personalisation: H on the device's selected channels.

The HyperNetwork is affine in its input (:mod:`shared.hypernet`), Θ = x·A + c with
x = m ⊙ (u − r), and an unselected channel contributes nothing, so the cloud only needs
the rows of A for the channels the device selected:
``Enc(Θ) = Enc(u[indices]) · A[indices] + (c − r[indices]·A[indices])``
(:func:`shared.hypernet.restricted_map`) — one vector × plain-matrix product, cheaper the
fewer channels are selected.

The product runs on SEAL directly (:mod:`server.ckks_matmul`: baby-step
giant-step diagonals, about a sixth of the key switches of TenSEAL's ``matmul``).
What can be prepared once is: a device's public context is parsed when it is
uploaded (:meth:`PersonalizationService.keep_context`) and kept parsed; the
plaintext diagonals of H's selected rows are encoded once per (H version, CKKS
parameters, selection). Both caches are LRUs bounded by memory (bytes), not by
count. The cloud holds only public material: it can compute on the ciphertext but
cannot decrypt the input or the result. Plaintext mode runs the same restricted map on numbers.
Nothing here writes to the registry, so a refused request leaves server state
unchanged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from server.bytes_cache import BytesBoundedCache
from server.ckks_matmul import EncodedRows, EvaluationKeys, encode_rows, evaluate, read_vector
from server.he_pool import HEWorkerPool
from server.registry import Registry
from server.registry.records import ModelRecord
from shared.channel_importance import channel_count, check_alpha, check_indices
from shared.embedding_adaptation import PLAIN, EmbeddingAdaptation
from shared.familiarity import FamiliarityReference
from shared.hypernet import HyperNetworkConfig, hypernet_from_state, restricted_map
from shared.model_names import HYPERNETWORK
from shared.saved_files import METHOD_FORMAT, read_payload

DEFAULT_HYPERNET = HYPERNETWORK
#: memory for parsed public contexts (``SECDOOD_CONTEXT_CACHE_BYTES``; ≈ 19 MB each at
#: N = 8192, [60, 40, 60])
DEFAULT_CONTEXT_CACHE_BYTES = 1024 * 1024 * 1024
#: memory for encoded diagonals of selected rows (≈ 4 MB per selection of 32 rows)
MAX_ENCODED_ROWS_BYTES = 128 * 1024 * 1024
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
    #: H's training devices' window means, sent to devices with Θ (None: an older H)
    familiarity: FamiliarityReference | None = None
    #: the embeddings H reads; a request must send this kind
    embedding: EmbeddingAdaptation = PLAIN


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
    #: the embeddings sent, as EmbeddingAdaptation.key ("" = plain, older devices)
    embedding_kind: str = ""


@dataclass(frozen=True)
class PersonalizeAnswer:
    """Θ for the device: ciphertext chunks (encrypted mode) or the numbers (plaintext mode)."""

    hypernet: FoldedHyperNet
    theta_ciphertexts: list[bytes]
    theta_plain: np.ndarray | None
    he_seconds: float


def hypernet_from_artifact(data: bytes) -> torch.nn.Module:
    """Load H from a registry artifact: the job runner's method format or a bare H state."""
    payload = read_payload(data, "hypernetwork artifact")
    if isinstance(payload, dict) and payload.get("format") == METHOD_FORMAT:
        payload = payload.get("state")
    return hypernet_from_state(payload)


class PersonalizationService:
    """Evaluates registered HyperNetworks for enrolled devices; caches models, contexts, rows."""

    def __init__(
        self,
        registry: Registry,
        context_cache_bytes: int = DEFAULT_CONTEXT_CACHE_BYTES,
        max_encoded_rows_bytes: int = MAX_ENCODED_ROWS_BYTES,
        workers: int = 0,
    ) -> None:
        """``context_cache_bytes`` bounds the parsed contexts (split evenly over workers).

        ``workers`` > 0 evaluates in that many processes (:mod:`server.he_pool`), which
        then hold the parsed contexts and encoded rows; 0 evaluates in the calling thread."""
        self._registry = registry
        self._pool = (
            HEWorkerPool(
                workers, registry.artifacts.root, context_cache_bytes, max_encoded_rows_bytes
            )
            if workers
            else None
        )
        self._hypernets: dict[str, FoldedHyperNet] = {}
        self.contexts: BytesBoundedCache[tuple[str, str], EvaluationKeys] = BytesBoundedCache(
            context_cache_bytes, lambda keys: keys.nbytes
        )
        self.encoded_rows: BytesBoundedCache[tuple[object, ...], EncodedRows] = BytesBoundedCache(
            max_encoded_rows_bytes, lambda rows: rows.nbytes
        )
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
        folded = FoldedHyperNet(
            record, model.config, a.numpy(), c.numpy(), reference, model.familiarity,
            model.embedding,
        )  # fmt: skip
        with self._lock:
            self._hypernets[record.artifact_sha256] = folded
        return folded

    def keep_context(
        self, device_id: str, sha256: str, keys: EvaluationKeys, data: bytes = b""
    ) -> None:
        """Keep a context parsed at upload, so the device's first request need not parse it.

        With workers, the device's worker parses ``data`` (its own copy) and ``keys``
        is dropped.
        """
        if self._pool is not None:
            self._pool.keep_context(device_id, sha256, data)
        else:
            self.contexts.put((device_id, sha256), keys)

    def close(self) -> None:
        """Stop the worker processes, if any."""
        if self._pool is not None:
            self._pool.close()

    def device_context(self, device_id: str) -> EvaluationKeys:
        """The device's current public context, parsed at upload (or now, if evicted)."""
        record = self._registry.current_context(device_id)
        if record is None:
            raise MissingContextError(NO_CONTEXT)
        keys = self.contexts.get((device_id, record.artifact_sha256))
        if keys is not None:
            return keys
        data = self._registry.artifacts.read_bytes(record.artifact_sha256)
        keys = EvaluationKeys.from_public_context(data)
        self.keep_context(device_id, record.artifact_sha256, keys)
        return keys

    def rows_for(
        self,
        keys: EvaluationKeys,
        hypernet: FoldedHyperNet,
        indices: np.ndarray,
        rows: np.ndarray,
        offset: np.ndarray,
    ) -> EncodedRows:
        """H's restricted map for ``indices`` (``rows``, ``offset``) as plaintext diagonals,
        encoded once per H version, CKKS parameters and selection."""
        sha256 = hypernet.record.artifact_sha256
        cache_key = (sha256, keys.parameters, keys.scale, indices.tobytes())
        encoded = self.encoded_rows.get(cache_key)
        if encoded is None:
            encoded = encode_rows(keys, rows, offset)
            self.encoded_rows.put(cache_key, encoded)
        return encoded

    def cached_context_bytes(self) -> int:
        """Estimated memory held by contexts cached in this process (at most the budget,
        or one context); with workers the contexts live in the workers instead."""
        return self.contexts.nbytes

    def personalize(self, device_id: str, query: PersonalizeQuery) -> PersonalizeAnswer:
        """Validate ``query`` and compute Θ with H restricted to ``indices`` (encrypted or plain).

        Raises ValueError/TypeError (→ INVALID_ARGUMENT) for bad input,
        including embeddings of another kind than H reads, MissingContextError when the
        device has no context, NotFoundError without H.
        """
        hypernet = self.hypernet(query.model_name, query.model_version)
        sent = EmbeddingAdaptation.from_key(query.embedding_kind)
        if sent != hypernet.embedding:
            raise ValueError(
                f"{hypernet.record.name} v{hypernet.record.version} reads "
                f"{hypernet.embedding.describe()} embeddings ({hypernet.embedding.key}); this "
                f"request sent {sent.describe()} ones ({sent.key}): embed with H's kind"
            )
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
        return self._encrypted(device_id, hypernet, indices, rows, offset, query)

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
        indices: np.ndarray,
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
        if self._pool is not None:
            record = self._registry.current_context(device_id)
            if record is None:
                raise MissingContextError(NO_CONTEXT)
            start = time.perf_counter()
            rows_key = (hypernet.record.artifact_sha256, indices.tobytes())
            chunks = self._pool.evaluate(
                device_id, record.artifact_sha256, rows_key, rows, offset, data
            )
            return PersonalizeAnswer(hypernet, chunks, None, time.perf_counter() - start)
        keys = self.device_context(device_id)
        start = time.perf_counter()
        ciphertext, size, scale = read_vector(keys, data)
        if size != indices.size:
            raise ValueError(f"ciphertext holds {size} values but {indices.size} indices were sent")
        encoded = self.rows_for(keys, hypernet, indices, rows, offset)
        chunks = evaluate(keys, encoded, ciphertext, scale)
        return PersonalizeAnswer(hypernet, chunks, None, time.perf_counter() - start)
