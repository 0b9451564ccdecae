"""Registered base models as ready-to-use bundles, for the CLI, the demo and benchmarks."""

from __future__ import annotations

from server.registry.records import ModelRecord
from server.registry.service import open_registry
from server.settings import Settings
from shared.model_names import BASE_MODEL
from shared.models.checkpoint import ModelBundle, bundle_from_bytes


def load_registered_bundle(
    settings: Settings,
    name: str = BASE_MODEL,
    version: int | None = None,
    train_if_missing: bool = False,
) -> tuple[ModelRecord, ModelBundle]:
    """``(record, bundle)`` of a registered base model (the registry is closed again).

    NotFoundError when it is absent, unless ``train_if_missing`` (then the
    default config is trained first, with a progress bar).
    """
    with open_registry(settings.database_url, settings.data_dir) as registry:
        if train_if_missing and version is None:
            from server.jobs import ensure_model  # the job runner sits above the registry

            record = ensure_model(registry, name)
        else:
            record = registry.get_model(name, version=version)
        return record, bundle_from_bytes(registry.artifacts.read_bytes(record.artifact_sha256))
