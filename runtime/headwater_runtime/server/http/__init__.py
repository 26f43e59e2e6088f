"""The server's HTTP side: the web UI and the JSON API behind it (docs/http-api.md)."""

from ._routes import ROLES, ROUTES, Route
from ._server import HttpServer, build_app, start_http

__all__ = ["ROLES", "ROUTES", "HttpServer", "Route", "build_app", "start_http"]
