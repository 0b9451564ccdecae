"""Names both ends of the gRPC wire must agree on (beyond the .proto contract)."""

#: trailing metadata of a RESOURCE_EXHAUSTED refusal: milliseconds to wait before retrying
RETRY_AFTER_METADATA = "retry-after-ms"
