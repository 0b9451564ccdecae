"""The one owner of the device's CKKS keys and of its personalised classifier Θ.

Everything the device needs for encrypted personalisation lives here, so no
other code wires a context by hand:

- **keys**: the private CKKS context is created on first use and kept only in
  the state directory (``he/secret-context``, mode 0600, in a 0700 folder). It is
  never sent and never logged; only :func:`shared.he.public_context_bytes` of it
  (public, relinearisation and Galois keys) goes to the cloud.
- **upload**: the public context is uploaded once per (server, device, key) and
  remembered in ``he/upload.json``. It is uploaded again by itself when the cloud
  answers FAILED_PRECONDITION (it lost the context) or refuses the ciphertext as
  not parsing under the context it holds (it holds another key or other CKKS
  parameters), and when the device's CKKS parameters change (new keys); the rule
  lives in :mod:`device_client.context_upload`.
- **Θ**: every refresh of the per-device Θ is saved to ``theta.json`` (0600) with
  the HyperNetwork's name, version and sha256, the base model it belongs to, the
  time and its Energy-threshold offset, and the head refined from it on the window to
  ``theta_refined.npz`` (0600), so a restarted device scores personalised (and judges
  with the personalised threshold) at once, even offline.

Files (all written atomically)::

    he/secret-context    TenSEAL context with the secret key (no Galois keys: the device
                         never rotates; they are made from the secret key for the upload)
    he/keys.json         key id, CKKS parameters, creation time
    he/upload.json       what the cloud holds: key id, server, device id, size, sha256, time
    personalization.json settings (alpha, mode, encrypted, refine), the last refresh and why
    theta.json           the cached per-device Θ (see :class:`CachedTheta`)
    theta_refined.npz    its refinement on the window (means and precisions; no embeddings)
    familiarity.bin      H's training devices' window means, sent with Θ (public data)
"""

from __future__ import annotations

import json
import secrets
import stat
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import tenseal as ts

from device_client.context_upload import UploadingTransport
from device_client.gateway_client import GatewayClient
from device_client.personalization import PersonalizeMode, Personalizer, ThetaSnapshot
from device_client.state import DeviceState, write_atomically
from device_client.theta_snapshot import CachedTheta, refined_from_bytes, refined_to_bytes
from shared.channel_importance import DEFAULT_ALPHA, check_alpha
from shared.familiarity import FamiliarityReference
from shared.he import CKKSParams, create_context, public_context_bytes

HE_DIR = "he"
SECRET_FILE = "secret-context"
KEYS_FILE = "keys.json"
UPLOAD_FILE = "upload.json"
SETTINGS_FILE = "personalization.json"
THETA_FILE = "theta.json"
#: the refined head of the cached Θ (binary: two D×D precisions; see theta_snapshot)
REFINED_FILE = "theta_refined.npz"
#: H's familiarity reference sent with the cached Θ (shared.familiarity; public data)
FAMILIARITY_FILE = "familiarity.bin"
#: CKKS parameters of new keys (the product's defaults; see :class:`shared.he.CKKSParams`)
DEFAULT_PARAMS = CKKSParams()


class KeyringError(ValueError):
    """The device's key material or cached Θ is unusable; the message says what to do."""


@dataclass(frozen=True)
class PersonalizationSettings:
    """How this device personalises (chosen by ``secdood-device personalize``)."""

    alpha: float = DEFAULT_ALPHA
    mode: PersonalizeMode = "per_device"
    encrypted: bool = True
    #: refine Θ on the device's window (device_client.head_refinement); per-device mode only
    refine: bool = True

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if self.mode not in ("per_device", "per_sample"):
            raise ValueError(f"mode must be 'per_device' or 'per_sample', got {self.mode!r}")


class DeviceKeyring:
    """Keys, public-context upload and the Θ cache of one device state directory."""

    def __init__(self, state: DeviceState, params: CKKSParams | None = None) -> None:
        self.state = state
        self.params = params or DEFAULT_PARAMS
        self._context: ts.Context | None = None
        #: keys.json content of keys made in this process and not yet written
        self._pending_info: dict[str, Any] | None = None

    # -- paths ---------------------------------------------------------------------------

    @property
    def he_dir(self) -> Path:
        return self.state.root / HE_DIR

    @property
    def secret_path(self) -> Path:
        return self.he_dir / SECRET_FILE

    def _json_path(self, name: str) -> Path:
        return (self.he_dir if name in (KEYS_FILE, UPLOAD_FILE) else self.state.root) / name

    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self._json_path(name)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except ValueError as error:
            raise KeyringError(f"{path} is damaged ({error}); delete it to start over") from None
        if not isinstance(data, dict):
            raise KeyringError(f"{path} is damaged (not a JSON object); delete it to start over")
        return data

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        path = self._json_path(name)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, json.dumps(data, indent=1).encode(), mode=0o600)

    # -- keys ----------------------------------------------------------------------------

    def has_keys(self) -> bool:
        return self.secret_path.is_file()

    def key_info(self) -> dict[str, Any] | None:
        """Key id, CKKS parameters and creation time (None before the first key)."""
        return self._read_json(KEYS_FILE)

    def context(self) -> ts.Context:
        """The private context: loaded from the state directory, created on first use.

        A damaged or foreign key file raises :class:`KeyringError` and is left as it
        is (nothing is overwritten); :meth:`new_keys` starts over deliberately.
        """
        if self._context is not None:
            return self._context
        info = self.key_info()
        if not self.has_keys():
            return self.new_keys()
        if info is None:
            raise KeyringError(
                f"{self.he_dir / KEYS_FILE} is missing beside the key file; run "
                "`secdood-device personalize --new-keys` to start over with new keys"
            )
        try:
            stored = CKKSParams(**info["params"])
        except (KeyError, TypeError, ValueError):
            raise KeyringError(
                f"{self.he_dir / KEYS_FILE} is damaged; run "
                "`secdood-device personalize --new-keys` to start over with new keys"
            ) from None
        if stored != self.params:
            return self.new_keys()  # the device's CKKS parameters changed: new keys, re-upload
        self._context = self._load_secret()
        return self._context

    def _load_secret(self) -> ts.Context:
        path = self.secret_path
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeyringError(
                f"{path} is readable by other users (mode {mode:o}); it holds the secret key: "
                f"`chmod 600 {path}`"
            )
        try:
            context = ts.context_from(path.read_bytes())
        except Exception as error:  # TenSEAL raises ValueError/RuntimeError on bad bytes
            raise KeyringError(
                f"the key file {path} is damaged ({type(error).__name__}); run "
                "`secdood-device personalize --new-keys` to start over with new keys "
                "(the cloud then gets the new public context)"
            ) from None
        if not context.is_private():
            raise KeyringError(
                f"the key file {path} holds no secret key; run "
                "`secdood-device personalize --new-keys`"
            )
        return context

    def new_keys(self) -> ts.Context:
        """A fresh private context, kept in memory until the cloud needs its public part.

        It is written (0600) just before the first upload (:meth:`save_keys`), so
        a failed first personalisation leaves the state directory as it was.
        """
        context = create_context(self.params)
        self._context = context
        self._pending_info = {
            "key_id": secrets.token_hex(8),
            "params": self.params.model_dump(mode="json"),
            "created_at": time.time(),
        }
        return context

    def save_keys(self) -> None:
        """Write keys made by :meth:`new_keys` (secret file 0600); forget the old upload."""
        if self._pending_info is None or self._context is None:
            return
        self.he_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        secret = self._context.serialize(
            save_public_key=True, save_secret_key=True, save_galois_keys=False
        )
        write_atomically(self.secret_path, secret, mode=0o600)
        self._write_json(KEYS_FILE, self._pending_info)
        self._json_path(UPLOAD_FILE).unlink(missing_ok=True)
        self._pending_info = None

    def key_id(self) -> str | None:
        """The id of the keys in use (pending or saved)."""
        info = self._pending_info or self.key_info()
        return None if info is None else info.get("key_id")

    def public_context(self) -> bytes:
        """The serialised public context for the cloud (Galois keys made here for it)."""
        context = self.context().copy()
        context.generate_galois_keys()
        return public_context_bytes(context)

    # -- upload --------------------------------------------------------------------------

    def upload_record(self) -> dict[str, Any] | None:
        return self._read_json(UPLOAD_FILE)

    def uploaded_to(self, server: str, device_id: str) -> bool:
        """Whether the cloud ``server`` was given the public part of the keys in use."""
        record = self.upload_record()
        return bool(
            record
            and record.get("key_id") == self.key_id()
            and record.get("server") == server
            and record.get("device_id") == device_id
        )

    def upload_outdated(self, server: str, device_id: str) -> bool:
        """The cloud holds a context of ours made with *other* keys (it would compute
        on our ciphertexts under the wrong key): upload before the next request."""
        record = self.upload_record()
        return bool(
            record
            and record.get("server") == server
            and record.get("device_id") == device_id
            and record.get("key_id") != self.key_id()
        )

    def upload(self, client: GatewayClient, server: str, device_id: str) -> dict[str, Any]:
        """Upload the public context now (saving new keys first) and remember it."""
        self.context()
        self.save_keys()
        data = self.public_context()
        receipt = client.upload_context(data)
        record = {
            "key_id": self.key_id(),
            "server": server,
            "device_id": device_id,
            "size_bytes": receipt.size_bytes,
            "sha256": receipt.sha256,
            "uploaded_at": time.time(),
        }
        self._write_json(UPLOAD_FILE, record)
        return record

    # -- settings and Θ ------------------------------------------------------------------

    def settings(self) -> PersonalizationSettings:
        data = self._read_json(SETTINGS_FILE) or {}
        fields = {k: data[k] for k in ("alpha", "mode", "encrypted", "refine") if k in data}
        return PersonalizationSettings(**fields)

    def save_settings(self, settings: PersonalizationSettings) -> None:
        data = self._read_json(SETTINGS_FILE) or {}
        self._write_json(SETTINGS_FILE, data | asdict(settings))

    def last_refresh(self) -> dict[str, Any] | None:
        """When the last refresh was attempted, whether it worked, and why it ran."""
        return (self._read_json(SETTINGS_FILE) or {}).get("last_refresh")

    def note_refresh(self, reason: str, ok: bool, detail: str = "") -> None:
        data = self._read_json(SETTINGS_FILE) or asdict(PersonalizationSettings())
        data["last_refresh"] = {"at": time.time(), "reason": reason, "ok": ok, "detail": detail}
        self._write_json(SETTINGS_FILE, data)

    def cached_theta(self) -> CachedTheta | None:
        data = self._read_json(THETA_FILE)
        if data is None:
            return None
        try:
            cached = CachedTheta.from_json(data)
        except (KeyError, TypeError, ValueError) as error:
            raise KeyringError(
                f"{self._json_path(THETA_FILE)} is damaged ({error!r}); delete it and run "
                "`secdood-device personalize`"
            ) from None
        refined_path = self.state.root / REFINED_FILE
        if refined_path.is_file():  # a missing, stale or damaged one is recomputed on the window
            refined = refined_from_bytes(refined_path.read_bytes(), cached.snapshot.theta)
            cached = replace(cached, snapshot=replace(cached.snapshot, refined=refined))
        familiarity_path = self.state.root / FAMILIARITY_FILE
        if familiarity_path.is_file():  # a damaged one is sent again at the next refresh
            try:
                reference = FamiliarityReference.from_bytes(familiarity_path.read_bytes())
            except ValueError:
                reference = None
            cached = replace(cached, snapshot=replace(cached.snapshot, familiarity=reference))
        return cached

    def save_theta(self, cached: CachedTheta) -> None:
        self._write_json(THETA_FILE, cached.to_json())
        refined_path, refined = self.state.root / REFINED_FILE, cached.snapshot.refined
        if refined is None:
            refined_path.unlink(missing_ok=True)
        else:
            write_atomically(refined_path, refined_to_bytes(refined, cached.snapshot.theta), 0o600)
        familiarity_path = self.state.root / FAMILIARITY_FILE
        if cached.snapshot.familiarity is None:
            familiarity_path.unlink(missing_ok=True)
        else:
            write_atomically(familiarity_path, cached.snapshot.familiarity.to_bytes(), 0o600)

    # -- the Personalizer ----------------------------------------------------------------

    def personalizer(
        self,
        client: GatewayClient | None,
        server: str,
        device_id: str,
        embed_dim: int,
        num_classes: int,
        model_key: str,
        settings: PersonalizationSettings | None = None,
        **options: Any,
    ) -> Personalizer:
        """A :class:`Personalizer` wired to this device's keys, upload and Θ cache.

        The cached Θ is restored when it belongs to the same base model, sizes,
        alpha and mode of encryption; otherwise it is ignored (and replaced at the
        next refresh). ``client`` may be None for offline scoring from the cache.
        """
        settings = settings or self.settings()
        transport = UploadingTransport(self, client, server, device_id)
        context = self.context() if settings.encrypted else None

        def remember(snapshot: ThetaSnapshot) -> None:
            self.save_theta(CachedTheta(snapshot, model_key, settings.alpha, settings.encrypted))
            self.note_refresh(snapshot.reason, ok=True)

        personalizer = Personalizer(
            transport,
            embed_dim,
            num_classes,
            context=context,
            alpha=settings.alpha,
            mode=settings.mode,
            on_refresh=remember,
            **({"refinement": None} if not settings.refine else {}) | options,
        )
        cached = self.cached_theta()
        if cached is not None and self.theta_matches(
            cached, model_key, personalizer.theta_size, settings
        ):
            personalizer.restore(cached.snapshot)
        return personalizer

    @staticmethod
    def theta_matches(
        cached: CachedTheta, model_key: str, theta_size: int, settings: PersonalizationSettings
    ) -> bool:
        return (
            cached.model_key == model_key
            and cached.snapshot.theta.size == theta_size
            and cached.alpha == settings.alpha
            and cached.encrypted == settings.encrypted
        )
