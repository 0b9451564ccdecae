"""TenSEAL's serialised forms, read and written with SEAL's own objects (``tenseal.sealapi``).

The cloud evaluates H with SEAL directly (:mod:`server.ckks_matmul`) instead of
through TenSEAL's ``CKKSVector``, so it must read what the device's TenSEAL
wrote — a public context, a ``CKKSVector`` — and answer in the same form. Both
are protobuf messages (``tenseal/proto/*.proto``) whose byte fields hold
SEAL-serialised objects; the messages are declared here field for field, and
the SEAL objects are loaded and saved through an in-memory file, the only
way ``sealapi`` reads and writes them.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import zstandard
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_Field = descriptor_pb2.FieldDescriptorProto

#: (message, [(field, number, type, repeated, message type)]) as in TenSEAL's .proto files
_MESSAGES: list[tuple[str, list[tuple[str, int, int, bool, str]]]] = [
    (
        "TenSEALPrivateProto",
        [
            ("secret_key", 1, _Field.TYPE_BYTES, False, ""),
            ("relin_keys_generated", 2, _Field.TYPE_BOOL, False, ""),
            ("galois_keys_generated", 3, _Field.TYPE_BOOL, False, ""),
        ],
    ),
    (
        "TenSEALPublicProto",
        [
            ("public_key", 1, _Field.TYPE_BYTES, False, ""),
            ("auto_flags", 2, _Field.TYPE_UINT32, False, ""),
            ("scale", 3, _Field.TYPE_DOUBLE, False, ""),
            ("relin_keys", 4, _Field.TYPE_BYTES, False, ""),
            ("galois_keys", 5, _Field.TYPE_BYTES, False, ""),
        ],
    ),
    (
        "TenSEALContextProto",
        [
            ("encryption_parameters", 1, _Field.TYPE_BYTES, False, ""),
            ("public_context", 2, _Field.TYPE_MESSAGE, False, "TenSEALPublicProto"),
            ("private_context", 3, _Field.TYPE_MESSAGE, False, "TenSEALPrivateProto"),
            ("encryption_type", 4, _Field.TYPE_UINT32, False, ""),
        ],
    ),
    (
        "CKKSVectorProto",
        [
            ("sizes", 1, _Field.TYPE_UINT32, True, ""),
            ("ciphertexts", 2, _Field.TYPE_BYTES, True, ""),
            ("scale", 3, _Field.TYPE_DOUBLE, False, ""),
        ],
    ),
]


def _message_classes() -> dict[str, Any]:
    file = descriptor_pb2.FileDescriptorProto(
        name="secdood_tenseal_wire.proto", package="tenseal", syntax="proto3"
    )
    for name, fields in _MESSAGES:
        message = file.message_type.add(name=name)
        for field, number, kind, repeated, type_name in fields:
            message.field.add(
                name=field,
                number=number,
                type=kind,
                label=_Field.LABEL_REPEATED if repeated else _Field.LABEL_OPTIONAL,
                type_name=f".tenseal.{type_name}" if type_name else None,
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tenseal.{name}"))
        for name, _ in _MESSAGES
    }


_CLASSES = _message_classes()
TenSEALContextProto = _CLASSES["TenSEALContextProto"]
CKKSVectorProto = _CLASSES["CKKSVectorProto"]


@contextmanager
def _scratch_file() -> Iterator[tuple[int, str]]:
    """An anonymous in-memory file (Linux), else a temporary one, as (descriptor, path)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("secdood-seal")
        try:
            yield fd, f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(prefix="secdood-seal-")
    try:
        yield fd, path
    finally:
        os.close(fd)
        os.unlink(path)


def seal_load(target: Any, data: bytes, *context: Any) -> None:
    """``target.load(*context, path)`` from ``data`` (a SEAL-serialised object)."""
    with _scratch_file() as (fd, path):
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        target.load(*context, path)


def seal_save(source: Any) -> bytes:
    """The bytes ``source.save(path)`` writes (SEAL's serialisation, compressed)."""
    with _scratch_file() as (fd, path):
        source.save(path)
        return os.pread(fd, os.fstat(fd).st_size, 0)


#: SEAL's serialisation header: magic, header size, version, compression mode, size
_SEAL_HEADER = struct.Struct("<HBBBBHQ")
_SEAL_MAGIC = 0xA15E
#: SEAL's compression modes (``seal::compr_mode_type``)
_COMPRESSION_NONE, _COMPRESSION_ZLIB, _COMPRESSION_ZSTD = 0, 1, 2
#: decompressed bytes looked at per step while sizing a SEAL object
_SIZING_STEP = 1 << 20


def seal_loaded_size(data: bytes, limit: int) -> int:
    """The size of a SEAL-serialised object once decompressed, counted up to ``limit``.

    What SEAL would allocate to load ``data`` (its objects are stored as they
    sit in memory, then compressed): a small compressed blob can expand a
    thousandfold, so this is asked *before* SEAL loads it. The decompressed
    bytes are counted in 1 MiB steps and dropped, so sizing takes at most
    that much memory; past ``limit`` it stops and returns a value above it.
    ValueError if ``data`` is not a SEAL object.
    """
    if len(data) < _SEAL_HEADER.size:
        raise ValueError("not a SEAL object: shorter than its header")
    magic, header_size, _, _, mode, _, size = _SEAL_HEADER.unpack_from(data)
    if magic != _SEAL_MAGIC or header_size != _SEAL_HEADER.size or size != len(data):
        raise ValueError("not a SEAL object: bad header")
    payload = memoryview(data)[header_size:]
    if mode == _COMPRESSION_NONE:
        return len(payload)
    if mode == _COMPRESSION_ZLIB:
        inflater = zlib.decompressobj()
        counted, rest = 0, payload
        while rest and counted <= limit:
            counted += len(inflater.decompress(rest, _SIZING_STEP))
            rest = inflater.unconsumed_tail
        return counted
    if mode == _COMPRESSION_ZSTD:
        counted = 0
        try:
            with zstandard.ZstdDecompressor().stream_reader(payload) as reader:
                while counted <= limit and (step := len(reader.read(_SIZING_STEP))):
                    counted += step
        except zstandard.ZstdError as error:
            raise ValueError(f"not a SEAL object: {error}") from None
        return counted
    raise ValueError(f"not a SEAL object: unknown compression mode {mode}")
