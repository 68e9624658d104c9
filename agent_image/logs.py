"""structlog as JSON lines on stderr, with whatever ids the caller binds (tenant, agent, workflow, ...)."""

from __future__ import annotations

import logging
import os
import sys

import structlog

from agent_image import contract


def configure_logging(level: str | None = None) -> None:
    level_name = (level or os.environ.get(contract.LOG_LEVEL, "INFO")).upper()
    identity = {
        key: os.environ[env]
        for key, env in (
            ("tenant", contract.TENANT),
            ("agent", contract.AGENT),
            ("generation", contract.GENERATION),
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
