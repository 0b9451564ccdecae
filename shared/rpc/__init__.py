"""Generated gRPC stubs (``make proto`` / ``python -m shared.protogen``).

Import ``from shared.rpc import gateway_pb2, gateway_pb2_grpc``. When the stubs
are missing (a source checkout that never ran the build) and grpcio-tools is
installed, they are generated on first import; otherwise a clear error says how.
"""

from __future__ import annotations

from pathlib import Path

_GENERATED = Path(__file__).resolve().parent / "secdood" / "v1" / "gateway_pb2.py"

if not _GENERATED.exists():
    try:
        from shared.protogen import build

        build()
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(
            "gRPC stubs are not generated; run `make proto` (needs grpcio-tools)"
        ) from exc

from shared.rpc.secdood.v1 import gateway_pb2, gateway_pb2_grpc  # noqa: E402

__all__ = ["gateway_pb2", "gateway_pb2_grpc"]
