"""structlog as JSON lines on stderr, with whatever ids the caller binds (tenant, agent, workflow, ...)."""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging(level: str | None = None) -> None:
    level_name = (level or os.environ.get("LITEFLEET_LOG_LEVEL", "INFO")).upper()
    identity = {
        key: os.environ[env]
        for key, env in (
            ("tenant", "LITEFLEET_TENANT"),
            ("agent", "LITEFLEET_AGENT"),
            ("generation", "LITEFLEET_GENERATION"),
        )
        if os.environ.get(env)
    }
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level_name, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    if identity:
        structlog.contextvars.bind_contextvars(**identity)
