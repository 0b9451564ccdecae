#!/bin/sh
# A simulated device: enrol (once), download the model, personalise its head with the
# cloud's HyperNetwork (CKKS-encrypted channels; the secret key stays in the volume),
# film its own shifted camera stream and score it locally with the personalised head,
# reporting telemetry and ending with one JSON line. Settings come from the environment
# (see docker-compose.yml; SECDOOD_ROOT_CERT turns on TLS).
set -eu

: "${SECDOOD_SERVER:?set SECDOOD_SERVER=host:port of the gRPC gateway}"
: "${SECDOOD_ENROLLMENT_KEY:?set SECDOOD_ENROLLMENT_KEY}"
: "${DEVICE_NAME:=device}"
: "${DEVICE_CORRUPTION:=fog}"
: "${DEVICE_SEVERITY:=3}"
: "${DEVICE_CLIPS:=24}"
: "${DEVICE_PERSONALIZE_CLIPS:=32}"

if [ ! -f "${SECDOOD_DEVICE_DIR}/device.json" ]; then
    if [ -n "${SECDOOD_ROOT_CERT:-}" ]; then
        set -- --root-cert "$SECDOOD_ROOT_CERT"
    fi
    secdood-device enroll --server "$SECDOOD_SERVER" --enrollment-key "$SECDOOD_ENROLLMENT_KEY" \
        --name "$DEVICE_NAME" --corruption "$DEVICE_CORRUPTION" --severity "$DEVICE_SEVERITY" "$@"
fi
secdood-device download
secdood-device personalize --clips "$DEVICE_PERSONALIZE_CLIPS"
secdood-device simulate-camera --out "${SECDOOD_DEVICE_DIR}/camera.mp4" --clips "$DEVICE_CLIPS"
exec secdood-device run --source "${SECDOOD_DEVICE_DIR}/camera.mp4" --personalize --report \
    --json --quiet
