"""Content-addressed artifact store: layout, idempotence, and clean failure."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.registry.artifacts import ArtifactStore
from server.registry.errors import ArtifactIntegrityError, NotFoundError


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts")


def test_put_bytes_names_the_file_by_sha256_in_a_two_character_shard(store: ArtifactStore) -> None:
    data = os.urandom(3000)
    sha = store.put_bytes(data)
    assert sha == hashlib.sha256(data).hexdigest()
    assert store.path(sha) == store.root / sha[:2] / sha
    assert store.path(sha).read_bytes() == data
    assert store.exists(sha) and store.size(sha) == len(data)


def test_same_content_twice_gives_one_file(store: ArtifactStore, tmp_path: Path) -> None:
    data = b"weights" * 100
    source = tmp_path / "model.bin"
    source.write_bytes(data)
    first = store.ingest([data])
    second = store.ingest([data[:10], data[10:]])
    assert first.created and not second.created
    assert store.put_file(source) == first.sha256
    assert store.put_stream(iter([data]), max_bytes=len(data)) == first.sha256
    assert files_under(store.root) == [store.path(first.sha256)]


def test_put_stream_reassembles_chunks(store: ArtifactStore) -> None:
    chunks = [os.urandom(n) for n in (1, 4096, 0, 777)]
    joined = b"".join(chunks)
    sha = store.put_stream(iter(chunks), max_bytes=len(joined), expected_sha256=None)
    assert sha == hashlib.sha256(joined).hexdigest()
    with store.open(sha, verify=True) as blob:
        assert blob.read() == joined
    assert b"".join(store.iter_chunks(sha, chunk_bytes=1000)) == joined
    assert max(len(chunk) for chunk in store.iter_chunks(sha, chunk_bytes=1000)) == 1000


def test_size_cap_rejects_and_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(ArtifactIntegrityError, match="size limit of 10 bytes"):
        store.put_stream(iter([b"12345", b"678901"]), max_bytes=10)
    assert files_under(store.root) == []
    # exactly at the cap is fine
    assert store.exists(store.put_stream(iter([b"12345", b"67890"]), max_bytes=10))


def test_sha_mismatch_rejects_and_leaves_nothing(store: ArtifactStore) -> None:
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(ArtifactIntegrityError, match="sha256 mismatch"):
        store.put_stream(iter([b"payload"]), max_bytes=100, expected_sha256=wrong)
    assert files_under(store.root) == []
    right = hashlib.sha256(b"payload").hexdigest()
    assert store.put_stream(iter([b"pay", b"load"]), 100, expected_sha256=right) == right


def test_truncated_upload_propagates_and_leaves_nothing(store: ArtifactStore) -> None:
    class ClientWentAway(ConnectionError):
        pass

    def truncated() -> Iterator[bytes]:
        yield b"first chunk"
        raise ClientWentAway("stream reset mid-upload")

    with pytest.raises(ClientWentAway):
        store.put_stream(truncated(), max_bytes=1000)
    assert files_under(store.root) == []


def test_corruption_is_detected_on_verified_read(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"original bytes")
    path = store.path(sha)
    path.chmod(0o644)
    path.write_bytes(b"tampered bytes")
    assert not store.verify(sha)
    with pytest.raises(ArtifactIntegrityError, match="corrupt"):
        store.open(sha, verify=True)
    with pytest.raises(ArtifactIntegrityError, match="corrupt"):
        store.read_bytes(sha)
    assert store.read_bytes(sha, verify=False) == b"tampered bytes"


def test_stored_blobs_are_read_only(store: ArtifactStore) -> None:
    sha = store.put_bytes(b"immutable")
    assert store.path(sha).stat().st_mode & 0o222 == 0


@pytest.mark.parametrize("bad", ["../../etc/passwd", "A" * 64, "0" * 63, "g" * 64])
def test_malformed_sha_is_refused_before_touching_the_disk(store: ArtifactStore, bad: str) -> None:
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.exists(bad)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        store.put_stream(iter([b"x"]), max_bytes=10, expected_sha256=bad)


def test_bad_arguments_raise_clear_errors(store: ArtifactStore) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(NotFoundError, match=missing):
        store.path(missing)
    with pytest.raises(KeyError):  # NotFoundError is a KeyError
        store.size(missing)
    with pytest.raises(TypeError, match="bytes-like"):
        store.put_stream(iter(["text, not bytes"]), max_bytes=100)
    with pytest.raises(ValueError, match="max_bytes must be a positive int"):
        store.put_stream(iter([b"x"]), max_bytes=0)
    with pytest.raises(TypeError, match="sha256 must be a str"):
        store.exists(123)  # type: ignore[arg-type]
    assert files_under(store.root) == []


def test_put_file_of_missing_path_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "absent.bin")
    assert files_under(store.root) == []


def test_delete_removes_only_that_blob(store: ArtifactStore) -> None:
    keep, drop = store.put_bytes(b"keep"), store.put_bytes(b"drop")
    assert store.delete(drop) and not store.delete(drop)
    assert store.exists(keep) and not store.exists(drop)
