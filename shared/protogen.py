"""Generate the Python gRPC stubs from ``proto/`` (``python -m shared.protogen``).

The generated files land in ``shared/rpc/secdood/v1/`` and are never edited by
hand or committed. protoc writes absolute imports (``from secdood.v1 import``);
they are rewritten to package imports so the stubs live inside ``shared``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

RPC_DIR = Path(__file__).resolve().parent / "rpc"
PROTO_ROOT = RPC_DIR.parents[1] / "proto"


def build(proto_root: Path = PROTO_ROOT, out_dir: Path = RPC_DIR) -> list[Path]:
    """Compile every ``.proto`` under ``proto_root``; returns the generated files."""
    from grpc_tools import protoc  # build-time dependency only (the dev extra)

    protos = sorted(proto_root.rglob("*.proto"))
    if not protos:
        raise FileNotFoundError(f"no .proto files under {proto_root}")
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *map(str, protos),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed; see the messages above")
    generated = sorted(out_dir.joinpath("secdood").rglob("*_pb2*.py*"))
    for path in generated:
        text = re.sub(r"^from secdood\.", "from shared.rpc.secdood.", path.read_text(), flags=re.M)
        path.write_text(text)
    for package in {p.parent for p in generated} | {out_dir / "secdood"}:
        (package / "__init__.py").touch()
    return generated


if __name__ == "__main__":
    files = build()
    print(f"generated {len(files)} files under {RPC_DIR / 'secdood'}", file=sys.stderr)
