"""The HTTP surface: admin API, and the server that ``headwater up`` runs."""

from headwater.api.app import create_app
from headwater.api.client import ApiClient, ApiError

__all__ = ["ApiClient", "ApiError", "create_app"]
