"""Where a device keeps its identity, its token and its downloaded models.

One directory, ``$SECDOOD_DEVICE_DIR`` or ``~/.secdood-device`` (mode 0700)::

    device.json                      server address, device id, name, profile, token expiry
    token                            the bearer token, mode 0600, nothing else in it
    models/<name>-<variant>.pt       downloaded artifacts (written atomically)
    models/<name>-<variant>.json     their ModelInfo (version, sha256, size, ...)

Every file is written to a temporary sibling and renamed into place, so a crash
never leaves a half-written identity, token or model.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ENV_VAR = "SECDOOD_DEVICE_DIR"
DEFAULT_DIR = "~/.secdood-device"
IDENTITY_FILE = "device.json"
TOKEN_FILE = "token"
MODELS_DIR = "models"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class NotEnrolledError(RuntimeError):
    """The device has no identity or token yet (``secdood-device enroll`` was never run)."""


@dataclass(frozen=True)
class DeviceIdentity:
    """What the device remembers about its enrolment (everything but the token)."""

    server: str
    device_id: str
    name: str
    token_expires_at: int
    profile: dict[str, Any] = field(default_factory=dict)
    #: PEM file of the CA/self-signed certificate to trust for TLS; None = plaintext gRPC
    root_cert: str | None = None


def default_state_dir() -> Path:
    """``$SECDOOD_DEVICE_DIR`` if set, else ``~/.secdood-device``."""
    return Path(os.environ.get(ENV_VAR) or DEFAULT_DIR).expanduser()


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and a rename."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temp_name, mode)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


class DeviceState:
    """The device's state directory (see the module docstring for its layout)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_state_dir()

    @property
    def identity_path(self) -> Path:
        return self.root / IDENTITY_FILE

    @property
    def token_path(self) -> Path:
        return self.root / TOKEN_FILE

    @property
    def models_dir(self) -> Path:
        return self.root / MODELS_DIR

    def ensure_dirs(self) -> None:
        """Create the state directory (0700: it holds a credential) and its models folder."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.models_dir.mkdir(mode=0o700, exist_ok=True)

    # -- identity and token --------------------------------------------------------------

    def save_enrollment(self, identity: DeviceIdentity, token: str) -> None:
        """Remember a fresh enrolment; the token goes to its own file with mode 0600."""
        if not isinstance(token, str) or not token:
            raise ValueError("token must be a non-empty string")
        self.ensure_dirs()
        write_atomically(self.token_path, token.encode("utf-8"), mode=0o600)
        write_atomically(self.identity_path, json.dumps(asdict(identity), indent=2).encode())

    def is_enrolled(self) -> bool:
        return self.identity_path.is_file() and self.token_path.is_file()

    def load_identity(self) -> DeviceIdentity:
        """The saved identity; :class:`NotEnrolledError` if there is none."""
        if not self.is_enrolled():
            raise NotEnrolledError(
                f"this device is not enrolled (no identity in {self.root}); run "
                "`secdood-device enroll --server HOST:PORT --enrollment-key KEY --name NAME`"
            )
        try:
            return DeviceIdentity(**json.loads(self.identity_path.read_text()))
        except (ValueError, TypeError) as error:
            raise NotEnrolledError(
                f"{self.identity_path} is damaged ({error}); enrol the device again"
            ) from None

    def load_token(self) -> str:
        """The saved bearer token; :class:`NotEnrolledError` if there is none."""
        self.load_identity()
        token = self.token_path.read_text().strip()
        if not token:
            raise NotEnrolledError(f"{self.token_path} is empty; enrol the device again")
        return token

    # -- models --------------------------------------------------------------------------

    def model_path(self, name: str, variant: str) -> Path:
        """Where the artifact ``name``/``variant`` is (or will be) stored."""
        for what, value in (("model name", name), ("variant", variant)):
            if not _SAFE_NAME.fullmatch(value):
                raise ValueError(f"{what} {value!r} may only use letters, digits, '_', '.', '-'")
        return self.models_dir / f"{name}-{variant}.pt"

    def model_info_path(self, name: str, variant: str) -> Path:
        return self.model_path(name, variant).with_suffix(".json")

    def save_model_info(self, name: str, variant: str, info: dict[str, Any]) -> None:
        self.ensure_dirs()
        write_atomically(self.model_info_path(name, variant), json.dumps(info, indent=2).encode())

    def load_model_info(self, name: str, variant: str) -> dict[str, Any] | None:
        """The saved ModelInfo of a downloaded model, or None if it was never downloaded."""
        path = self.model_info_path(name, variant)
        return json.loads(path.read_text()) if path.is_file() else None
