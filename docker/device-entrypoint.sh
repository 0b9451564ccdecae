#!/bin/sh
# A simulated device: enrol (once), download the model, film its own shifted
# camera stream and score it locally, reporting telemetry. Settings come from
# the environment (see docker-compose.yml; SECDOOD_ROOT_CERT turns on TLS).
set -eu

: "${SECDOOD_SERVER:?set SECDOOD_SERVER=host:port of the gRPC gateway}"
: "${SECDOOD_ENROLLMENT_KEY:?set SECDOOD_ENROLLMENT_KEY}"
: "${DEVICE_NAME:=device}"
: "${DEVICE_CORRUPTION:=fog}"
: "${DEVICE_SEVERITY:=3}"
: "${DEVICE_CLIPS:=24}"

if [ ! -f "${SECDOOD_DEVICE_DIR}/device.json" ]; then
    if [ -n "${SECDOOD_ROOT_CERT:-}" ]; then
        set -- --root-cert "$SECDOOD_ROOT_CERT"
    fi
    secdood-device enroll --server "$SECDOOD_SERVER" --enrollment-key "$SECDOOD_ENROLLMENT_KEY" \
        --name "$DEVICE_NAME" --corruption "$DEVICE_CORRUPTION" --severity "$DEVICE_SEVERITY" "$@"
fi
secdood-device download
secdood-device simulate-camera --out "${SECDOOD_DEVICE_DIR}/camera.mp4" --clips "$DEVICE_CLIPS"
exec secdood-device run --source "${SECDOOD_DEVICE_DIR}/camera.mp4" --report
