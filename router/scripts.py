"""Lua scripts inside a pipeline without an extra round trip.

redis-py's ``Script`` objects, called with a pipeline, make ``execute()`` ask the
server ``SCRIPT EXISTS`` first: one more round trip before the pipeline itself.
:class:`PipelineScripts` queues ``SCRIPT LOAD`` (once per script and pipeline) in
front of the ``EVALSHA`` calls instead, so the pipeline stays one round trip and
still works on a server whose script cache was emptied (a restart, ``SCRIPT
FLUSH``): Redis runs a pipeline's commands in order, so the load precedes its use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.client import Pipeline
from redis.commands.core import AsyncScript, Script

from router.wire import Commands


class PipelineScripts:
    """Queue scripts on one pipeline."""

    def __init__(self, pipe: Pipeline | Commands) -> None:
        self.pipe = pipe
        self._loaded: set[str] = set()

    def __call__(self, script: Script | AsyncScript, keys: Sequence[str], args: Sequence[Any]) -> None:
        if script.sha not in self._loaded:
            self.pipe.script_load(script.script)
            self._loaded.add(script.sha)
        self.pipe.evalsha(script.sha, len(keys), *keys, *args)
