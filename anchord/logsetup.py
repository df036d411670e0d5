"""JSON-lines logging for every anchord process: the one place that configures it.

Each line is one JSON object with ``time``, ``level``, ``worker``, ``message`` and
``fields`` (from ``extra={"fields": {...}}``). A worker writes each line to its
stdout, which supervisord keeps in the bounded per-program log that
``supervisorctl tail <worker>`` reads, and also to the container's console
(the entry process's stdout, named by ``ANCHORD_CONSOLE``), which is what
``docker compose logs`` shows. supervisord closes inherited descriptors in its
children, so the console is reopened by path rather than inherited.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import IO, Any

CONSOLE_ENV = "ANCHORD_CONSOLE"


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: str) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "time": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "worker": self.worker,
            "message": record.getMessage(),
            "logger": record.name,
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line["fields"] = fields
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class _TeeHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each record to stdout and, if set, to the container console."""

    def __init__(self, stream: IO[str], console: IO[str] | None) -> None:
        super().__init__(stream)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        if self.console is not None:
            try:
                self.console.write(self.format(record) + "\n")
                self.console.flush()
            except (OSError, ValueError):
                # The console went away (entry process gone): stdout still has it.
                self.console = None


def _open_console() -> IO[str] | None:
    path = os.environ.get(CONSOLE_ENV, "")
    if not path:
        return None
    try:
        return open(path, "a", buffering=1, encoding="utf-8")
    except OSError:
        return None


def configure(worker: str, level: int = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send every log record of this process as JSON lines, tagged with ``worker``."""
    handler = _TeeHandler(stream or sys.stdout, _open_console())
    handler.setFormatter(JsonFormatter(worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Third-party chatter stays at warning unless we debug.
    for noisy in ("urllib3",):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
