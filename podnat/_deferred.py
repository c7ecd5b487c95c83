"""Start-up: modules typer imports at start that podnat's commands do not use, loaded on first use.

typer (0.12-0.16) imports `rich.markdown`, and with it markdown-it, when it starts, for one help
markup mode ("markdown"); podnat uses the "rich" mode. That import is about a sixth of an offline
command's start (`make bench`, cold start). Until something asks for it, `rich.markdown` is a
stand-in module: its first use (an attribute, or `Markdown(...)`) loads the real module, which then
takes the stand-in's place (a `Markdown` imported before that is a stand-in class whose instances
are the real class's). `defer_rich_markdown()` does nothing when the module is already loaded.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

_NAME = "rich.markdown"


def defer_rich_markdown() -> None:
    if _NAME in sys.modules:
        return
    stand_in = types.ModuleType(_NAME, "stand-in: the real rich.markdown is loaded on first use")

    def load() -> types.ModuleType:
        if sys.modules.get(_NAME) is stand_in:
            del sys.modules[_NAME]
        real = importlib.import_module(_NAME)
        stand_in.__dict__.update({k: v for k, v in real.__dict__.items() if k != "__getattr__"})
        return real

    def __getattr__(name: str) -> Any:  # PEP 562: anything but Markdown loads the real module
        if name.startswith("__"):  # e.g. the import system asking for __path__: not a use
            raise AttributeError(name)
        return getattr(load(), name)

    class Markdown:
        """Stands for rich.markdown.Markdown until the first one is made."""

        def __new__(cls, *args: Any, **kwargs: Any) -> Any:
            return load().Markdown(*args, **kwargs)

    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    stand_in.Markdown = Markdown  # type: ignore[attr-defined]
    sys.modules[_NAME] = stand_in
    import rich

    rich.markdown = stand_in  # type: ignore[attr-defined]  # as an import would bind it
