"""Names of the registered models both sides ask for, defined once.

The cloud registers artifacts under these names and the device asks for them
over gRPC; the literal lives only here so the two can never drift apart.
"""

from __future__ import annotations

#: the two-stream base model (``secdood-server train``, the device's download)
BASE_MODEL = "secdood_base"
#: the HyperNetwork that personalises the fused head (``train --method hypernetwork``)
HYPERNETWORK = "hypernetwork"
