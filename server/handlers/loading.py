"""`load_handler("mypkg.handlers:DigitsHandler")`: a handler class from an import path.

Handler code comes only from packages installed beside the server and named in its config,
never from the store, which holds data only.
"""

from __future__ import annotations

import importlib
import re

from .base import Handler

_PATH = re.compile(r"^(?P<module>[A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):(?P<attr>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")


class HandlerNotFound(Exception):
    """The configured handler cannot be imported or is not a Handler subclass."""


def load_handler(path: str) -> type[Handler]:
    """The Handler subclass named by `module:Class`; HandlerNotFound saying what is wrong."""
    match = _PATH.match(path) if isinstance(path, str) else None
    if match is None:
        raise HandlerNotFound(f"handler {path!r} must look like 'package.module:ClassName'")
    module_name, attr = match["module"], match["attr"]
    try:
        obj: object = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name) and module_name[len(e.name) :][:1] in ("", "."):
            raise HandlerNotFound(
                f"handler {path!r}: no module named {e.name!r} (is the package that holds it installed?)"
            ) from None
        raise HandlerNotFound(f"handler {path!r}: importing {module_name!r} failed: {e}") from e
    except Exception as e:  # the module's own import-time error: say it, with its traceback chained
        raise HandlerNotFound(f"handler {path!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise HandlerNotFound(f"handler {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, Handler)):
        raise HandlerNotFound(f"handler {path!r} is a {type(obj).__name__}, not a subclass of server.handlers.Handler")
    if obj is Handler:
        raise HandlerNotFound(f"handler {path!r} is the base class itself; name your subclass")
    return obj
