"""A faithful fake of the Elastic Path Jobs API (PCM and v2) for tests, the demo and benchmarks."""

from bridge.simulator.api import DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT, TOKEN_ROUTE
from bridge.simulator.app import make_app
from bridge.simulator.faults import Faults
from bridge.simulator.model import FILE_BASE_URL, ORDERS, PCM_TYPES, SOURCES, V2_FAILURE, SimJob
from bridge.simulator.render import (
    DEFAULT_BASE_URL,
    GO_ZERO_TIME,
    TIMESTAMP_STYLES,
    V2_STATUS_STYLES,
    format_timestamp,
)
from bridge.simulator.runner import serve
from bridge.simulator.state import REQUEST_LOG_SIZE, SIMULATOR, Simulator
from bridge.simulator.traffic import ERROR_MESSAGES

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_PAGE_LIMIT",
    "ERROR_MESSAGES",
    "FILE_BASE_URL",
    "GO_ZERO_TIME",
    "MAX_PAGE_LIMIT",
    "ORDERS",
    "PCM_TYPES",
    "REQUEST_LOG_SIZE",
    "SIMULATOR",
    "SOURCES",
    "TIMESTAMP_STYLES",
    "TOKEN_ROUTE",
    "V2_FAILURE",
    "V2_STATUS_STYLES",
    "Faults",
    "SimJob",
    "Simulator",
    "format_timestamp",
    "make_app",
    "serve",
]
