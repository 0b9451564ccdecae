"""Content-addressed artifact store: every blob is a file named by its sha256.

Layout under the data directory::

    <data_dir>/artifacts/<sha256[:2]>/<sha256>      finished blobs, read-only (0o444)
    <data_dir>/artifacts/.incoming-*                 uploads in progress (same filesystem)

A blob is written to a temporary file beside the shards, checked (size cap,
optional expected sha256) and only then moved into place with an atomic
:func:`os.replace`, so a reader never sees a half-written blob and a failed or
truncated upload leaves nothing behind. Storing the same bytes twice yields the
same sha256 and one file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from server.registry.errors import ArtifactIntegrityError, NotFoundError
from shared.wire import CHUNK_BYTES  # also the step when hashing or streaming files

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_INCOMING_PREFIX = ".incoming-"


class StoredBlob(NamedTuple):
    """Outcome of one upload: the blob's address, its size and whether it is new."""

    sha256: str
    size_bytes: int
    #: False when identical bytes were already stored (the upload was a no-op)
    created: bool


def check_sha256(sha256: object) -> str:
    """Return ``sha256`` if it is 64 lowercase hex characters; raise otherwise.

    Checked before any path is built so a hostile digest cannot escape the store.
    """
    if not isinstance(sha256, str):
        raise TypeError(f"sha256 must be a str of 64 hex characters, got {type(sha256).__name__}")
    if not _SHA256_HEX.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
    return sha256


def _as_bytes(chunk: object) -> bytes | bytearray | memoryview:
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise TypeError(f"artifact chunks must be bytes-like, got {type(chunk).__name__}")
    return chunk


class ArtifactStore:
    """Blobs on local disk, addressed by sha256 (see the module docstring for the layout)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- writing -------------------------------------------------------------------------

    def ingest(
        self,
        chunks: Iterable[bytes],
        max_bytes: int | None = None,
        expected_sha256: str | None = None,
    ) -> StoredBlob:
        """Store a stream of chunks and report sha256, size and whether the blob is new.

        Raises :class:`ArtifactIntegrityError` (a ``ValueError``) when the stream
        exceeds ``max_bytes`` or hashes to something other than ``expected_sha256``;
        an exception raised by ``chunks`` itself (a truncated upload) propagates
        unchanged. In every failure case the temporary file is removed.
        """
        if max_bytes is not None and (
            isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0
        ):
            raise ValueError(f"max_bytes must be a positive int or None, got {max_bytes!r}")
        if expected_sha256 is not None:
            check_sha256(expected_sha256)

        fd, temp_name = tempfile.mkstemp(prefix=_INCOMING_PREFIX, dir=self.root)
        temp_path = Path(temp_name)
        try:
            digest = hashlib.sha256()
            size = 0
            with os.fdopen(fd, "wb") as temp_file:
                for chunk in chunks:
                    data = _as_bytes(chunk)
                    size += len(data)
                    if max_bytes is not None and size > max_bytes:
                        raise ArtifactIntegrityError(
                            f"artifact exceeds the size limit of {max_bytes} bytes"
                        )
                    digest.update(data)
                    temp_file.write(data)
                temp_file.flush()
                os.fsync(temp_file.fileno())
            sha256 = digest.hexdigest()
            if expected_sha256 is not None and sha256 != expected_sha256:
                raise ArtifactIntegrityError(
                    f"artifact sha256 mismatch: expected {expected_sha256}, received {sha256} "
                    f"({size} bytes) — the upload is corrupt or incomplete"
                )
            final_path = self._blob_path(sha256)
            if final_path.exists():
                temp_path.unlink()
                return StoredBlob(sha256, size, created=False)
            final_path.parent.mkdir(exist_ok=True)
            os.chmod(temp_path, 0o444)
            os.replace(temp_path, final_path)
            return StoredBlob(sha256, size, created=True)
        except BaseException:
            temp_path.unlink(missing_ok=True)
            raise

    def put_stream(
        self,
        chunks: Iterable[bytes],
        max_bytes: int | None,
        expected_sha256: str | None = None,
    ) -> str:
        """Store a (possibly untrusted) chunked upload; return its sha256. See :meth:`ingest`."""
        return self.ingest(chunks, max_bytes, expected_sha256).sha256

    def put_bytes(self, data: bytes) -> str:
        """Store ``data``; return its sha256 (idempotent)."""
        return self.ingest([_as_bytes(data)]).sha256

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Copy the file at ``path`` into the store; return its sha256 (idempotent)."""
        return self.ingest(iter_file_chunks(Path(path))).sha256

    def delete(self, sha256: str) -> bool:
        """Remove a blob; return whether it existed. Callers must know nothing refers to it."""
        try:
            self._blob_path(check_sha256(sha256)).unlink()
        except FileNotFoundError:
            return False
        return True

    # -- reading -------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        """Filesystem path of an existing blob; :class:`NotFoundError` if it is absent."""
        blob_path = self._blob_path(check_sha256(sha256))
        if not blob_path.is_file():
            raise NotFoundError("artifact", sha256)
        return blob_path

    def exists(self, sha256: str) -> bool:
        """Whether a blob with this sha256 is stored."""
        return self._blob_path(check_sha256(sha256)).is_file()

    def size(self, sha256: str) -> int:
        """Size of a stored blob in bytes."""
        return self.path(sha256).stat().st_size

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored blob and report whether its content still matches its name."""
        digest = hashlib.sha256()
        for chunk in iter_file_chunks(self.path(sha256)):
            digest.update(chunk)
        return digest.hexdigest() == sha256

    def open(self, sha256: str, verify: bool = False) -> BinaryIO:
        """Open a blob for binary reading; with ``verify`` re-hash it first.

        Raises :class:`ArtifactIntegrityError` if verification finds the bytes on
        disk no longer match the sha256 (disk corruption or tampering).
        """
        if verify and not self.verify(sha256):
            raise ArtifactIntegrityError(f"stored artifact {sha256} is corrupt (sha256 mismatch)")
        return self.path(sha256).open("rb")

    def read_bytes(self, sha256: str, verify: bool = True) -> bytes:
        """The whole blob in memory, checked against its sha256 unless ``verify`` is False."""
        data = self.path(sha256).read_bytes()
        if verify and hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactIntegrityError(f"stored artifact {sha256} is corrupt (sha256 mismatch)")
        return data

    def iter_chunks(self, sha256: str, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
        """Yield a blob in chunks of at most ``chunk_bytes`` (for streaming downloads)."""
        if chunk_bytes <= 0:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        return iter_file_chunks(self.path(sha256), chunk_bytes)

    def _blob_path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256


def iter_file_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Yield the file at ``path`` in chunks of at most ``chunk_bytes`` (lazily opened)."""
    with path.open("rb") as file:
        while chunk := file.read(chunk_bytes):
            yield chunk
