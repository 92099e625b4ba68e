"""abx experiments and feature flags, evaluated locally by abx-core (Rust) in this process.

    import abx
    client = abx.Client("https://abx.example.com", "abx_server_...", public_key="3b39...")
    client.assign("checkout_button_color", {"user_id": "u-123", "country": "DE"}).variant
    client.flag("new_checkout", {"user_id": "u-123"}, default=False)
    client.track("u-123", "purchase", 42.0)

    user = abx.Context({"user_id": "u-123", "country": "DE"})   # converted once per request
    [client.assign(key, user) for key in ("a", "b", "c")]
"""

from ._abx import Assignment, Context, FlagDetail
from .client import Client
from .errors import AbxError
from .results import Evaluation

__all__ = ["AbxError", "Assignment", "Client", "Context", "Evaluation", "FlagDetail"]
