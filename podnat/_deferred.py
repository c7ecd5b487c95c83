"""Start-up: modules typer imports at start that podnat's commands do not use, loaded on first use.

The one place podnat plays an import-time trick. typer (0.12-0.16) imports, when it starts:

- `rich.markdown` (and with it markdown-it) for one help markup mode ("markdown"); podnat uses "rich";
- `rich.traceback` (and with it rich.pretty, rich.syntax, pygments and attrs) for its pretty
  exceptions, which podnat turns off (`pretty_exceptions_enable=False`: a traceback only with --debug,
  printed plainly).

- `typer.rich_utils`, and with it rich's console, tables, panels and text, for its help screens and
  its usage errors; a command that runs never shows either (`explain -o json` prints no rich at all).
  typer's only call into it at start, `_get_rich_console` for its pretty exceptions' console, gets a
  console made on first use.

Together about half of an offline command's start (`make bench`, cold start). Until something
asks for one of them, the module is a stand-in: its first use (an attribute, making one of its
classes, or a class attribute such as `Traceback.from_exception`) loads the real module, which then
takes the stand-in's place. A class imported from the stand-in before that stays a stand-in class
whose instances are the real class's. Importing this module defers them (a no-op for a module that
is already loaded), so `cli.py` imports it before typer.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

# module -> the classes typer imports from it at start
DEFERRED: dict[str, tuple[str, ...]] = {
    "rich.markdown": ("Markdown",),
    "rich.traceback": ("Traceback",),
    "typer.rich_utils": (),
}
# module -> the functions typer calls at start whose result it keeps for later (made on its first use)
CALLED_AT_START: dict[str, tuple[str, ...]] = {"typer.rich_utils": ("_get_rich_console",)}


class _Later:
    """What a deferred module's function returns when typer calls it at start: the real result, made on
    first use (an attribute) from the real function."""

    def __init__(self, make: Any) -> None:
        self._make = make
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._real is None:
            self._real = self._make()
        return getattr(self._real, attr)


def defer(name: str, classes: tuple[str, ...], called: tuple[str, ...] = ()) -> None:
    """Put a stand-in for the module `name` (a submodule of an importable package) in sys.modules:
    `classes` are stand-in classes, `called` functions whose result is a _Later."""
    if name in sys.modules:
        return
    stand_in = types.ModuleType(name, f"stand-in: the real {name} is loaded on first use")

    def load() -> types.ModuleType:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        real = importlib.import_module(name)
        stand_in.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__getattr__"})
        return real

    def __getattr__(attr: str) -> Any:  # PEP 562: anything but the stand-in classes loads the real module
        if attr.startswith("__"):  # e.g. the import system asking for __path__: not a use
            raise AttributeError(attr)
        return getattr(load(), attr)

    class StandInType(type):
        def __getattr__(cls, attr: str) -> Any:  # a class attribute, e.g. Traceback.from_exception
            if attr.startswith("__"):
                raise AttributeError(attr)
            return getattr(getattr(load(), cls.__name__), attr)

    def stand_in_class(class_name: str) -> type:
        def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
            return getattr(load(), class_name)(*args, **kwargs)

        doc = f"Stands for {name}.{class_name} until the first one is made."
        return StandInType(class_name, (), {"__new__": __new__, "__doc__": doc, "__module__": name})

    def stand_in_function(function_name: str) -> Any:
        def function(*args: Any, **kwargs: Any) -> _Later:
            return _Later(lambda: getattr(load(), function_name)(*args, **kwargs))

        return function

    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    for class_name in classes:
        setattr(stand_in, class_name, stand_in_class(class_name))
    for function_name in called:
        setattr(stand_in, function_name, stand_in_function(function_name))
    sys.modules[name] = stand_in
    package, _, attr = name.rpartition(".")
    setattr(importlib.import_module(package), attr, stand_in)  # as an import would bind it


for _name, _classes in DEFERRED.items():
    defer(_name, _classes, CALLED_AT_START.get(_name, ()))
