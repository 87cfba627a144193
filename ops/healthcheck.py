"""The image HEALTHCHECK: `/health/live` for the web role; other roles have no HTTP server.

For worker, beat and the consumers the container's main process *is* the check (it exits on
failure); Kubernetes ignores HEALTHCHECK and uses the probes in deploy/ instead.
"""
from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path


def main() -> int:
    role_file = Path(os.environ.get("TMPDIR", "/tmp")) / "streamforge-role"
    role = role_file.read_text().strip() if role_file.is_file() else "web"
    if role != "web":
        return 0
    url = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/health/live"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 — fixed local URL
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
