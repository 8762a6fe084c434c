"""Typed app-state keys of the queen, in one place (not to be confused with API keys: ``auth``)."""

from aiohttp import web

from rbee.peer import Peers
from rbee.queen.admission import AdmissionQueue
from rbee.queen.dispatch import Dispatcher
from rbee.queen.hive_control import HiveControl
from rbee.queen.hive_registry import HiveRegistry
from rbee.queen.registry import Registry
from rbee.queen.settings import QueenSettings

SETTINGS = web.AppKey("settings", QueenSettings)
REGISTRY = web.AppKey("registry", Registry)
HIVES = web.AppKey("hives", HiveRegistry)
QUEUE = web.AppKey("queue", AdmissionQueue)
PEERS = web.AppKey("peers", Peers)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
HIVE_CONTROL = web.AppKey("hive_control", HiveControl)
