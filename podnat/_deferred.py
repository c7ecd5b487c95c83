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

The official Kubernetes client's package imports, when any part of it is imported, modules that the
calls podnat makes never use (a third of a live command's start, ~70 ms: `make bench`):

- `kubernetes.dynamic`, `kubernetes.informer`, `kubernetes.leaderelection`, `kubernetes.watch` (podnat
  lists and watches with its own calls), and `kubernetes.stream` (exec: loaded when an exec is made);
- `requests_oauthlib` and `oauthlib.oauth2` (with requests), which `kube_config` uses only to refresh
  an OIDC token (its `OAuth2Session`, made then, loads them);
- `dateutil.parser`, whose `parse` `ApiClient` calls only to build a model with a date from an answer
  (podnat reads answers raw; the agent's Events are built): a forwarding function until then;
- `kubernetes.client.api_client`, and with it pydantic (~70 ms alone): `kube_config` imports `ApiClient`
  but makes none for a kubeconfig loaded into a Configuration; podnat's calls go through its REST layer
  (podnat/kube/client.py: PlainApiClient). An exec, or the agent's Events, makes a real one.

They are deferred without importing their parent packages (the client's own imports bind them, or
find them: `kubernetes.client` resolves its names lazily). A
deferred package's stand-in has the real package's `__path__`, so a submodule imported directly (e.g.
`kubernetes.stream.ws_client`) is loaded once, from where it lives.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from pathlib import Path
from typing import Any

# module -> the classes imported from it at start (typer's, the client's)
DEFERRED: dict[str, tuple[str, ...]] = {
    "rich.markdown": ("Markdown",),
    "rich.traceback": ("Traceback",),
    "typer.rich_utils": (),
    "kubernetes.dynamic": (),
    "kubernetes.informer": (),
    "kubernetes.leaderelection": (),
    "kubernetes.watch": (),
    "kubernetes.stream": (),
    "requests_oauthlib": ("OAuth2Session",),
    "oauthlib.oauth2": (),
    "dateutil.parser": (),
    "kubernetes.client.api_client": ("ApiClient",),
}
# module -> the functions typer calls at start whose result it keeps for later (made on its first use)
CALLED_AT_START: dict[str, tuple[str, ...]] = {"typer.rich_utils": ("_get_rich_console",)}
# module -> the functions imported from it at start, called later: each call is the real function's
FORWARDED: dict[str, tuple[str, ...]] = {"dateutil.parser": ("parse",)}
# packages not imported to bind their deferred submodules' stand-ins (which would load what is deferred,
# or cost every command's start what only a live one needs): their own import binds them (`from . import
# watch`), they find them by name (kubernetes.client's and dateutil's lazy __getattr__), or their one user
# reaches them through a class that loads them first (kube_config's `oauthlib.oauth2.rfc6749.errors`,
# after an `OAuth2Session` is made)
BOUND_BY_PARENT = frozenset({"kubernetes", "kubernetes.client", "dateutil", "oauthlib"})


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


def defer(name: str, classes: tuple[str, ...], called: tuple[str, ...] = (), forwarded: tuple[str, ...] = ()) -> None:
    """Put a stand-in for the module `name` in sys.modules: `classes` are stand-in classes, `called`
    functions whose result is a _Later, `forwarded` functions that call the real one."""
    if name in sys.modules:
        return
    stand_in = types.ModuleType(name, f"stand-in: the real {name} is loaded on first use")
    load = _Loader(name, stand_in)
    stand_in.__getattr__ = load.attribute  # type: ignore[method-assign]
    for class_name in classes:
        setattr(stand_in, class_name, _stand_in_class(load, class_name))
    for function_name in called:
        setattr(stand_in, function_name, _later_function(load, function_name))
    for function_name in forwarded:
        setattr(stand_in, function_name, _forwarding_function(load, function_name))
    sys.modules[name] = stand_in
    package, _, attr = name.rpartition(".")
    if package and package not in BOUND_BY_PARENT:
        setattr(importlib.import_module(package), attr, stand_in)  # as an import would bind it


class _Loader:
    """Loads the real module in its stand-in's place (the stand-in then holds what the real one holds)."""

    def __init__(self, name: str, stand_in: types.ModuleType) -> None:
        self.name = name
        self.stand_in = stand_in

    def __call__(self) -> types.ModuleType:
        if sys.modules.get(self.name) is self.stand_in:
            del sys.modules[self.name]
        real = importlib.import_module(self.name)
        self.stand_in.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__getattr__"})
        return real

    def attribute(self, attr: str) -> Any:
        """The stand-in's PEP 562 __getattr__: anything but its stand-in classes loads the real module."""
        if attr == "__path__" and (path := _package_path(self.name)) is not None:
            return [path]  # a package: a submodule imported directly loads once, from where it lives
        if attr.startswith("__"):  # e.g. the import system asking for __file__: not a use
            raise AttributeError(attr)
        return getattr(self(), attr)


def _stand_in_class(load: _Loader, class_name: str) -> type:
    class StandInType(type):
        def __getattr__(cls, attr: str) -> Any:  # a class attribute, e.g. Traceback.from_exception
            if attr.startswith("__"):
                raise AttributeError(attr)
            return getattr(getattr(load(), cls.__name__), attr)

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:
        return getattr(load(), class_name)(*args, **kwargs)

    doc = f"Stands for {load.name}.{class_name} until the first one is made."
    return StandInType(class_name, (), {"__new__": __new__, "__doc__": doc, "__module__": load.name})


def _later_function(load: _Loader, function_name: str) -> Any:
    def function(*args: Any, **kwargs: Any) -> _Later:
        return _Later(lambda: getattr(load(), function_name)(*args, **kwargs))

    return function


def _forwarding_function(load: _Loader, function_name: str) -> Any:
    def function(*args: Any, **kwargs: Any) -> Any:
        return getattr(load(), function_name)(*args, **kwargs)

    function.__name__ = function.__qualname__ = function_name
    return function


def _package_path(name: str) -> str | None:
    """The directory of the package `name` (None: a module, or not installed), found without running it or
    its parents: from where its top package lives."""
    top, *rest = name.split(".")
    found = importlib.machinery.PathFinder.find_spec(top)  # not sys.modules: it may hold the stand-in
    if found is None or not found.submodule_search_locations:
        return None
    where = Path(next(iter(found.submodule_search_locations)), *rest)
    return str(where) if (where / "__init__.py").is_file() else None


for _name, _classes in DEFERRED.items():
    defer(_name, _classes, CALLED_AT_START.get(_name, ()), FORWARDED.get(_name, ()))
