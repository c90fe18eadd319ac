"""The router's HTTP side: the OpenAI-compatible API on FastAPI, one module per concern.

``app`` assembles them (and holds the request life cycle); ``chat``, ``completions``, ``models``
and ``ops`` own routes; ``middleware`` owns request ids, API keys, the access log and the request
counter; ``errors`` owns the OpenAI error JSON; ``deps`` hands the shared objects to the routes.
"""

from router.api.app import create_app
from router.api.middleware import RequestIdFilter

__all__ = ["RequestIdFilter", "create_app"]
