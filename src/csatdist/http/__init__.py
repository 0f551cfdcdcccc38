"""The HTTP adapter: FastAPI routers, one per concern, over the same service functions as the CLI
and the stream consumer. :func:`create_app` assembles them."""

from csatdist.http.app import create_app

__all__ = ["create_app"]
