"""The REST face (`/api/v1`): one module per area, each declaring its operations in the registry.

Importing the package registers every operation; `app.py` feeds the router from `REST.routes()`
and openapi.py generates the document from the same entries.
"""

from __future__ import annotations

from ..registry import REST
from . import auth, edits, files, images, jobs, system

__all__ = ["REST", "auth", "edits", "files", "images", "jobs", "system"]
