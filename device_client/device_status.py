"""``secdood-device status``: what the device knows about itself, read from its state alone.

Enrolment, downloaded models, keys and the public-context upload, the cached
personalised head Θ (HyperNetwork version and age), the last refresh and why,
and the personalisation settings. Never touches the network and never reads
the secret key (only its file's size and mode).
"""

from __future__ import annotations

import stat
import time
from typing import Any

from device_client.keyring import DeviceKeyring, KeyringError
from device_client.state import DeviceState, NotEnrolledError
from shared.model_names import BASE_MODEL

VARIANTS = ("float", "int8")


def collect_status(state: DeviceState) -> dict[str, Any]:
    """One JSON-ready dict; damaged files are reported in it, never raised."""
    status: dict[str, Any] = {"state_dir": str(state.root)}
    try:
        identity = state.load_identity()
        status["enrolment"] = {
            "device_id": identity.device_id,
            "name": identity.name,
            "server": identity.server,
            "token_expires_at": identity.token_expires_at,
            "profile": identity.profile,
            "tls": identity.root_cert is not None,
        }
    except NotEnrolledError as error:
        status["enrolment"] = {"error": str(error)}
    status["models"] = {
        variant: info for variant in VARIANTS if (info := _model_info(state, variant)) is not None
    }
    keyring = DeviceKeyring(state)
    try:
        status["keys"] = _keys(keyring)
        status["context_upload"] = keyring.upload_record()
        status["settings"] = vars(keyring.settings()).copy()
        status["last_refresh"] = keyring.last_refresh()
        cached = keyring.cached_theta()
        status["theta"] = None
        if cached is not None:
            snapshot = cached.snapshot
            status["theta"] = {
                "hypernet": vars(snapshot.hypernet).copy(),
                "refreshed_at": snapshot.refreshed_at,
                "age_s": time.time() - snapshot.refreshed_at,
                "reason": snapshot.reason,
                "base_model": cached.model_key,
                "alpha": cached.alpha,
                "encrypted": cached.encrypted,
                "energy_offset": snapshot.energy_offset,
            }
    except KeyringError as error:
        status["keyring_error"] = str(error)
    return status


def _model_info(state: DeviceState, variant: str) -> dict[str, Any] | None:
    try:
        info = state.load_model_info(BASE_MODEL, variant)
    except ValueError:
        return {"error": f"{state.model_info_path(BASE_MODEL, variant)} is damaged"}
    if info is None:
        return None
    return {k: info.get(k) for k in ("name", "version", "variant", "sha256", "sizeBytes")}


def _keys(keyring: DeviceKeyring) -> dict[str, Any] | None:
    if not keyring.has_keys():
        return None
    info = keyring.key_info() or {}
    path_stat = keyring.secret_path.stat()
    return {
        "key_id": info.get("key_id"),
        "params": info.get("params"),
        "created_at": info.get("created_at"),
        "file": str(keyring.secret_path),
        "file_mode": f"{stat.S_IMODE(path_stat.st_mode):04o}",
        "file_bytes": path_stat.st_size,
    }


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def format_status(status: dict[str, Any]) -> str:
    """The status as short labelled lines for a person."""
    lines = [f"state:        {status['state_dir']}"]
    enrolment = status["enrolment"]
    if "error" in enrolment:
        lines.append(f"enrolment:    not enrolled ({enrolment['error']})")
    else:
        profile = enrolment["profile"] or {}
        shift = (
            f"{profile['corruption']} severity {profile.get('severity')}"
            if profile.get("corruption")
            else "no simulated camera shift"
        )
        lines.append(
            f"enrolment:    {enrolment['name']} (device {enrolment['device_id']}) at "
            f"{enrolment['server']}{' (TLS)' if enrolment['tls'] else ''}; token valid until "
            f"{_when(enrolment['token_expires_at'])}; profile: {shift}"
        )
    models = status["models"]
    lines.append(
        "models:       "
        + (
            ", ".join(
                f"{variant} v{info.get('version')} (sha256 {str(info.get('sha256'))[:12]}…)"
                if "error" not in info
                else f"{variant}: {info['error']}"
                for variant, info in models.items()
            )
            or "none downloaded (`secdood-device download`)"
        )
    )
    if "keyring_error" in status:
        lines.append(f"keys:         ERROR {status['keyring_error']}")
        return "\n".join(lines)
    keys = status["keys"]
    if keys is None:
        lines.append("keys:         none yet (made by the first `secdood-device personalize`)")
    else:
        params = keys.get("params") or {}
        lines.append(
            f"keys:         CKKS N={params.get('poly_modulus_degree')} "
            f"{params.get('coeff_mod_bit_sizes')} scale 2^{params.get('scale_bits')}, created "
            f"{_when(keys['created_at'])}; secret key file mode {keys['file_mode']} (never sent)"
        )
    upload = status["context_upload"]
    lines.append(
        f"context:      public part uploaded, {upload['size_bytes'] / 1e6:.1f} MB at "
        f"{_when(upload['uploaded_at'])}"
        if upload
        else "context:      not uploaded"
    )
    theta = status["theta"]
    if theta is None:
        lines.append("theta:        none cached (`secdood-device personalize`)")
    else:
        lines.append(
            f"theta:        {theta['hypernet']['name']} v{theta['hypernet']['version']}, age "
            f"{_age(theta['age_s'])} (refreshed {_when(theta['refreshed_at'])}: "
            f"{theta['reason']}), for {theta['base_model']}"
        )
        offset = theta["energy_offset"]
        lines.append(
            "threshold:    Energy threshold of the model"
            + (" (no offset cached)" if offset is None else f" {offset:+.4f} for this theta")
        )
    last = status["last_refresh"]
    if last:
        outcome = "ok" if last["ok"] else f"failed: {last.get('detail')}"
        lines.append(f"last refresh: {_when(last['at'])}, {last['reason']} — {outcome}")
    settings = status["settings"]
    lines.append(
        f"settings:     alpha {settings['alpha']}, mode {settings['mode']}, "
        f"{'encrypted' if settings['encrypted'] else 'plaintext'}, "
        f"theta {'refined on the window' if settings.get('refine', True) else 'used as sent'}"
    )
    return "\n".join(lines)
