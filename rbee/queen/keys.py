"""Typed app-state keys of the queen, in one place."""

from aiohttp import ClientSession, web

from rbee.queen.admission import AdmissionQueue
from rbee.queen.dispatch import Dispatcher
from rbee.queen.registry import Registry
from rbee.queen.settings import QueenSettings

SETTINGS = web.AppKey("settings", QueenSettings)
REGISTRY = web.AppKey("registry", Registry)
QUEUE = web.AppKey("queue", AdmissionQueue)
HTTP = web.AppKey("http", ClientSession)
DISPATCHER = web.AppKey("dispatcher", Dispatcher)
