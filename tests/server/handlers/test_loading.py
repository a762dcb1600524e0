"""`load_handler`: a handler class from the import path in the config, or an error that says why not."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.handlers import Handler, HandlerNotFound, load_handler
from server.handlers.digits import DigitsHandler


@pytest.fixture
def user_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An installed package of the user's, as the config would name it."""
    pkg = tmp_path / "userpkg_h14"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "handlers.py").write_text(
        "from server.handlers import Handler\n"
        "class Mine(Handler):\n"
        "    class Inner(Handler):\n"
        "        pass\n"
        "def not_a_class():\n"
        "    pass\n"
        "class Plain:\n"
        "    pass\n"
    )
    (pkg / "broken.py").write_text("import numpy\nraise RuntimeError('the module is broken')\n")
    (pkg / "needs_dep.py").write_text("import a_dependency_nobody_installed\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "userpkg_h14"


def test_loads_the_demo_handler_and_a_users_own() -> None:
    assert load_handler("server.handlers.digits:DigitsHandler") is DigitsHandler


def test_loads_a_user_package_and_nested_classes(user_package: str) -> None:
    mine = load_handler(f"{user_package}.handlers:Mine")
    assert issubclass(mine, Handler) and mine.__name__ == "Mine"
    assert load_handler(f"{user_package}.handlers:Mine.Inner").__name__ == "Inner"


@pytest.mark.parametrize(
    "path, message",
    [
        ("server.handlers.digits.DigitsHandler", "must look like 'package.module:ClassName'"),
        ("server/handlers/digits.py:DigitsHandler", "must look like 'package.module:ClassName'"),
        ("", "must look like"),
        ("nopkg_h14.handlers:X", "no module named 'nopkg_h14' (is the package that holds it installed?)"),
        ("server.handlers.nomodule:X", "no module named 'server.handlers.nomodule'"),
        ("server.handlers.digits:Nope", "module 'server.handlers.digits' has no attribute 'Nope'"),
        ("json:dumps", "is a function, not a subclass of server.handlers.Handler"),
        ("server.handlers:Handler", "is the base class itself"),
    ],
)
def test_bad_paths_say_what_is_wrong(path: str, message: str) -> None:
    with pytest.raises(HandlerNotFound) as e:
        load_handler(path)
    assert message in str(e.value) and repr(path) in str(e.value)


def test_a_users_broken_module_is_named_with_its_error(user_package: str) -> None:
    with pytest.raises(
        HandlerNotFound, match=r"importing 'userpkg_h14\.broken' failed: RuntimeError: the module is broken"
    ):
        load_handler(f"{user_package}.broken:X")
    with pytest.raises(HandlerNotFound, match="No module named 'a_dependency_nobody_installed'"):
        load_handler(f"{user_package}.needs_dep:X")
    with pytest.raises(HandlerNotFound, match="is a type, not a subclass"):
        load_handler(f"{user_package}.handlers:Plain")
