"""The cloud's registry: a database of models, devices, HE contexts, jobs and
telemetry, plus a content-addressed artifact store, behind one thread-safe
:class:`Registry` service that the gRPC and REST layers share.

Typical use::

    registry = open_registry(None, "data")          # SQLite under data/, migrated
    registry = open_registry(settings.database_url, settings.data_dir)   # from Settings
    model = registry.register_model("secdood", "secdood", config, metrics, blob)
    device, token = registry.enroll_device("cam-1", {"corruption": "fog"})
"""

from server.registry.artifacts import ArtifactStore, StoredBlob
from server.registry.errors import (
    ArtifactIntegrityError,
    DatabaseUnavailableError,
    JobStateError,
    NotFoundError,
)
from server.registry.records import (
    ContextRecord,
    DeviceRecord,
    JobRecord,
    ModelRecord,
    TelemetryRecord,
)
from server.registry.service import Registry, open_registry
from server.registry.tables import JobState

__all__ = [
    "ArtifactIntegrityError",
    "ArtifactStore",
    "ContextRecord",
    "DatabaseUnavailableError",
    "DeviceRecord",
    "JobRecord",
    "JobState",
    "JobStateError",
    "ModelRecord",
    "NotFoundError",
    "Registry",
    "StoredBlob",
    "TelemetryRecord",
    "open_registry",
]
