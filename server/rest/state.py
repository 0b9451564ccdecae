"""What the REST layer shares between requests: registry, settings, jobs, the served model, keys.

The served model is loaded once (``load_model``) and swapped atomically, so a
request always sees one consistent ``(ModelRecord, OODPipeline)`` pair. Until a
model is loaded the service is *live* but not *ready* (``/v2/health/ready`` is
503). API keys are kept only as sha256 digests and compared in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

from server.jobs import JobRunner
from server.registry import ModelRecord, Registry
from server.settings import Settings
from shared.model_names import BASE_MODEL as BASE_MODEL_NAME
from shared.models.checkpoint import bundle_from_bytes
from shared.ood.registry import DETECTORS
from shared.pipeline import OODPipeline

log = logging.getLogger(__name__)

#: registry name (and method) of the SecDOOD base model — the one model the REST API serves


class Role(enum.IntEnum):
    """What a key may do; a higher role includes every lower one (admin can also score)."""

    SCORING = 1
    ADMIN = 2


class ModelNotReadyError(RuntimeError):
    """No model is loaded yet (the server is still bootstrapping); clients should retry."""


@dataclass(frozen=True)
class ServedModel:
    """The loaded base model: its registry record and the pipeline that scores with it."""

    record: ModelRecord
    pipeline: OODPipeline

    @property
    def version(self) -> str:
        return str(self.record.version)

    def detectors(self) -> list[str]:
        """Detectors usable as the main detector: known ones with a calibrated threshold."""
        return sorted(name for name in DETECTORS if name in self.pipeline.bundle.thresholds)


def key_digest(key: str) -> bytes:
    """sha256 of an API key — the only form in which the service keeps keys."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def _digest_or_none(secret: SecretStr | None) -> bytes | None:
    if secret is None or not secret.get_secret_value():
        return None
    return key_digest(secret.get_secret_value())


class ServiceState:
    """Registry, settings, job runner and the served model of one REST server process.

    ``jobs`` defaults to a fresh :class:`~server.jobs.JobRunner` on ``registry``.
    A key that is unset in ``settings`` accepts nobody (never an open door): with
    no admin key the admin routes are closed, with no scoring key only the admin
    key can score.
    """

    def __init__(
        self, registry: Registry, settings: Settings, jobs: JobRunner | None = None
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.jobs = jobs if jobs is not None else JobRunner(registry, settings.max_queued_jobs)
        self._key_digests: dict[Role, bytes | None] = {
            Role.SCORING: _digest_or_none(settings.scoring_api_key),
            Role.ADMIN: _digest_or_none(settings.admin_api_key),
        }
        self._served: ServedModel | None = None
        self._load_lock = threading.Lock()
        #: whether the gRPC gateway answers its health check (set by the serve command)
        self.gateway_check: Callable[[], bool] | None = None

    def gateway_serving(self) -> bool:
        """Whether the gRPC gateway of this process reports SERVING (True without one)."""
        return self.gateway_check is None or self.gateway_check()

    # -- the served model ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a model is loaded and requests can be scored."""
        return self._served is not None

    @property
    def model(self) -> ModelRecord | None:
        """Registry record of the loaded model, or None until one is loaded."""
        served = self._served
        return None if served is None else served.record

    @property
    def pipeline(self) -> OODPipeline | None:
        """The loaded pipeline, or None until a model is loaded."""
        served = self._served
        return None if served is None else served.pipeline

    @property
    def current(self) -> ServedModel | None:
        """The loaded model, or None until one is loaded."""
        return self._served

    def served(self) -> ServedModel:
        """The loaded model; raises :class:`ModelNotReadyError` if there is none yet."""
        served = self._served
        if served is None:
            raise ModelNotReadyError(
                f"no model is loaded yet (waiting for {BASE_MODEL_NAME!r}); retry shortly"
            )
        return served

    def load_model(self, name: str = BASE_MODEL_NAME, version: int | None = None) -> ModelRecord:
        """Load ``name`` (newest version by default, float variant) from the registry and serve it.

        Fits every detector on the artifact's reference features first, so the
        first request is not slow and requests never race to fit a detector.
        Raises ``NotFoundError`` if the model is absent and ``ValueError`` if its
        artifact is not a base-model artifact.
        """
        with self._load_lock:
            record = self.registry.get_model(name, version, "float")
            bundle = bundle_from_bytes(self.registry.artifacts.read_bytes(record.artifact_sha256))
            pipeline = OODPipeline(bundle)
            for detector in DETECTORS:
                pipeline.detector(detector)
            self._served = ServedModel(record, pipeline)
        log.info("serving model %s v%s", record.name, record.version)
        return record

    def is_base_model_name(self, name: str) -> bool:
        """Whether ``name`` is a registered base model (one the REST API can serve)."""
        try:
            models = self.registry.list_models(name)
        except (TypeError, ValueError):
            return False
        return any(model.method == BASE_MODEL_NAME for model in models)

    # -- API keys ------------------------------------------------------------------------

    def role_for_key(self, presented: str) -> Role | None:
        """The highest role ``presented`` grants, or None for an unknown key.

        Every configured digest is compared (constant time each), so the time
        taken does not depend on which key, if any, matched.
        """
        digest = key_digest(presented)
        granted: Role | None = None
        for role in (Role.SCORING, Role.ADMIN):
            expected = self._key_digests[role]
            if expected is not None and hmac.compare_digest(digest, expected):
                granted = role
        return granted
