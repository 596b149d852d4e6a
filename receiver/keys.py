"""The receiver application's typed keys, in a module of their own so that the factory
(``receiver.app``) and the handlers (``receiver.views``) share them without importing each
other."""

from __future__ import annotations

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from receiver.lanes import Lanes
from shared.operations import Operations
from shared.publisher import Publisher
from shared.settings import Settings
from shared.store import Store

SETTINGS = web.AppKey("settings", Settings)
PUBLISHER = web.AppKey("publisher", Publisher)
STORE = web.AppKey("store", Store)
OPENAPI = web.AppKey("openapi", bytes)
OPERATIONS = web.AppKey("operations", Operations)
ACCEPT_LOG = web.AppKey("accept_log", FilteringBoundLogger)
LANES = web.AppKey("lanes", Lanes)
