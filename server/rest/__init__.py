"""The REST API (FastAPI): Open Inference Protocol, friendly scoring, registry and jobs.

Typical use::

    state = ServiceState(registry, settings)     # keys, job runner, no model yet
    app = create_app(state)                      # serve it with uvicorn
    state.load_model()                           # now /v2/health/ready is 200

Routes are documented in docs/rest.md and live at ``/docs`` (OpenAPI).
"""

from server.rest.app import create_app
from server.rest.state import BASE_MODEL_NAME, ModelNotReadyError, Role, ServiceState

__all__ = ["BASE_MODEL_NAME", "ModelNotReadyError", "Role", "ServiceState", "create_app"]
