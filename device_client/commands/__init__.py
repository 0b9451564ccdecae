"""The ``secdood-device`` commands too long to sit in :mod:`device_client.cli`."""
