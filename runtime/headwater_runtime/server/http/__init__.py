"""The server's HTTP side: the web UI and the JSON API behind it (docs/http-api.md)."""

from ._routes import ROUTES, Route, check_tables
from ._server import HttpServer, build_app, start_http

__all__ = ["ROUTES", "HttpServer", "Route", "build_app", "check_tables", "start_http"]
