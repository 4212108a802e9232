"""Operator logging: structlog over the standard ``logging`` module.

A library never prints on its own: events go to the ``bastion`` loggers, silent until an
application configures logging (``bastion serve`` and the CLI call :func:`configure`).

>>> from bastion.logs import get_logger
>>> get_logger("bastion.doc").debug("nothing is printed", answer=42)
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SHARED: list[Any] = [
    structlog.stdlib.add_logger_name,
    structlog.stdlib.add_log_level,
    structlog.processors.TimeStamper(fmt="iso"),
]

logging.getLogger("bastion").addHandler(logging.NullHandler())


def get_logger(name: str) -> Any:
    """A structlog logger for the stdlib logger ``name`` (key-value events, never f-strings)."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


def configure(level: int = logging.INFO, json: bool | None = None) -> None:
    """Show bastion's logs on stderr: JSON lines when not on a terminal (or ``json=True``)."""
    if json is None:
        json = not sys.stderr.isatty()
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=_SHARED)
    )
    root = logging.getLogger("bastion")
    root.handlers[:] = [handler]
    root.setLevel(level)
