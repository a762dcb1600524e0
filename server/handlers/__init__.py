"""Handlers: the operator's own pre- and post-processing around a stored model (docs/handlers.md).

A user subclasses `Handler`; the server loads it by import path (`load_handler`), sets up one
instance per loaded version (`setup_handler`) and calls it through the guarded `BoundHandler`.
"""

from .base import BYTES, Arrays, Handler, HandlerInputError, HandlerSetupError, TensorInfo
from .bound import BoundHandler, handler_name, handler_signature, setup_handler, to_json, to_tensor
from .loading import HandlerNotFound, load_handler

__all__ = [
    "BYTES",
    "Arrays",
    "BoundHandler",
    "Handler",
    "HandlerInputError",
    "HandlerNotFound",
    "HandlerSetupError",
    "TensorInfo",
    "handler_name",
    "handler_signature",
    "load_handler",
    "setup_handler",
    "to_json",
    "to_tensor",
]
