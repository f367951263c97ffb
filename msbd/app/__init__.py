"""Edit in the browser: a local web app over `msbd.cli_edit.edit` (started by `scripts/app.py`, `make app`).

`server.create_app(AppSettings(...))` builds the FastAPI app: the page in `static/` (an image canvas with a mask
brush and eraser, the knobs, progress bars, candidates, stages, result and download) and its JSON API; `jobs`
queues the edits and runs them one at a time. Requests are validated with the command line's own checks.
"""
from msbd.app.server import AppSettings, create_app

__all__ = ["AppSettings", "create_app"]
