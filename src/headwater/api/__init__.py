"""The HTTP surface: admin API, and the server that ``headwater up`` runs."""

from headwater.api.app import add_ingress, create_app
from headwater.api.client import ApiClient, ApiError

__all__ = ["ApiClient", "ApiError", "add_ingress", "create_app"]
