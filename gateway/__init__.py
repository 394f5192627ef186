"""sse-gateway: a Server-Sent Events push gateway for modern and legacy browsers.

The public Python API is `Publisher`; the server is run with the `sse-gateway` command.
"""

from .publisher import Publisher, PublishError

__all__ = ["PublishError", "Publisher"]
__version__ = "0.1.0"
