"""Names both ends of the gRPC wire must agree on (beyond the .proto contract)."""

#: trailing metadata of a RESOURCE_EXHAUSTED refusal: milliseconds to wait before retrying
RETRY_AFTER_METADATA = "retry-after-ms"

#: bytes per streamed chunk: model downloads and HE context uploads (1 MiB)
CHUNK_BYTES = 1 << 20
#: largest gRPC message either side sends or accepts: one chunk plus room for the
#: protobuf framing and the sha256 on a first chunk
MAX_MESSAGE_BYTES = CHUNK_BYTES + 64 * 1024
