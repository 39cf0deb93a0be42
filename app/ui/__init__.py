"""The audit viewer at `/ui/`: server-rendered pages over the same query code as the API.

`routes.py` mounts it; one module per page (`events.py`, `correlations.py`, `playbooks.py`,
`dlq.py`), the live tail (`tail.py`), login and the cookie (`auth.py`), the response headers
(`headers.py`), what the templates share (`rendering.py`, `format.py`). Templates are in
`templates/`, the stylesheet and the two small scripts in `static/`: no build step.
"""

from app.ui.routes import viewer_mount

__all__ = ["viewer_mount"]
