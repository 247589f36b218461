"""The dashboard (SPEC §8, §9): one HTML page, CSS and vanilla JS modules, all served from here.

No build step and no external CDN: ``static/`` is served as is. The page talks only to the JSON API
(``/api/v2/...``) with the gateway token the user pasted (an admin sees everyone's records, anyone
else their own: the API decides), kept in the browser's sessionStorage; the
server side knows nothing of a dashboard session. Everything it shows is built with DOM calls
(``textContent``), never HTML strings, and the Content-Security-Policy below forbids inline script,
so a prompt or tool argument that looks like HTML stays text.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from flask import Blueprint, Response, abort, redirect, render_template, send_from_directory

STATIC_DIR = Path(__file__).resolve().parent / "static"
PREFIX = "/dashboard"

#: Only what the page needs: its own scripts, styles and API; no inline script, no framing.
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
                           "frame-ancestors 'none'")
_MIME_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".ico": "image/x-icon"}


def _asset_version() -> str:
    """A digest of the static files: changes whenever one does, so browsers never mix versions."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(STATIC_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _secured(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


def dashboard_blueprint() -> Blueprint:
    bp = Blueprint("dashboard", __name__, template_folder="templates")
    version = _asset_version()

    @bp.get(PREFIX)
    def dashboard_redirect() -> Response:
        return _secured(redirect(f"{PREFIX}/", code=308))

    @bp.get(f"{PREFIX}/")
    def dashboard_index() -> Response:
        response = Response(render_template("dashboard.html", version=version, prefix=PREFIX), mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return _secured(response)

    @bp.get(f"{PREFIX}/static/<path:filename>")
    def dashboard_static(filename: str) -> Response:
        suffix = Path(filename).suffix
        if suffix not in _MIME_TYPES:
            abort(404)
        response = send_from_directory(STATIC_DIR, filename, mimetype=_MIME_TYPES[suffix], max_age=0)
        response.headers["Cache-Control"] = "no-cache"  # revalidated by ETag; the page pins ?v=version
        return _secured(response)

    return bp
