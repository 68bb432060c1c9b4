"""The RQ peer of benchmark B2: the seeds' design, one job per delivery, one blocking POST per job.

An RQ worker imports this module (``rq worker --path tests/perf``) and runs
:func:`post` once per job, opening a new connection each time as a job
function without shared state does.
"""

from __future__ import annotations

import httpx


def post(url: str, body: bytes, headers: dict[str, str]) -> int:
    response = httpx.post(url, content=body, headers=headers, timeout=10.0)
    response.raise_for_status()
    return response.status_code
