"""Backend plugins, discovered through the ``gcore.plugins`` entry-point group.

A plugin is an import package registered as, in its ``pyproject.toml``::

    [project.entry-points."gcore.plugins"]
    mlx = "gcore_mlx"

It should define ``FRAMEWORK`` (the distribution name of the framework it adapts) and
may define ``devices() -> list[str]``. Listing plugins imports nothing; a plugin (and so
its framework) is imported only by :func:`plugin`.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata
import warnings
from types import ModuleType

__all__ = ["GROUP", "PluginInfo", "available", "describe", "plugin"]

GROUP = "gcore.plugins"


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(
                f"two gcore plugins are named {ep.name!r} ({found[ep.name].value} and "
                f"{ep.value}); using the first",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        found.setdefault(ep.name, ep)
    return found


def available() -> list[str]:
    """Names of the installed plugins, sorted; nothing is imported.

    Examples
    --------
    >>> import gcore
    >>> "numpy" in gcore.plugins.available()
    True
    """
    return sorted(_entry_points())


def plugin(name: str) -> ModuleType:
    """Import and return the plugin package registered as ``name``.

    Raises
    ------
    LookupError
        If no plugin of that name is installed (the message lists those that are).
    ImportError
        If the plugin is installed but its framework is not; the message names the
        extra to install.

    Examples
    --------
    >>> import gcore
    >>> gcore.plugin("numpy").__name__
    'gcore_numpy'
    """
    eps = _entry_points()
    if name not in eps:
        raise LookupError(
            f"no gcore plugin named {name!r}; installed: {', '.join(available()) or 'none'}"
        )
    ep = eps[name]
    try:
        return importlib.import_module(ep.value)
    except ImportError as err:
        dist = ep.dist.name if ep.dist is not None else "gradient-centralization"
        hint = (
            f"pip install 'gradient-centralization[{name}]'"
            if dist == "gradient-centralization"
            else f"see the {dist!r} distribution's requirements"
        )
        raise ImportError(
            f"gcore plugin {name!r} could not be imported ({err}); to install its "
            f"framework: {hint}"
        ) from err


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """What :func:`describe` found out about one plugin."""

    name: str
    module: str
    importable: bool
    framework: str | None = None
    framework_version: str | None = None
    devices: tuple[str, ...] = ()
    error: str | None = None


def describe(name: str) -> PluginInfo:
    """Import plugin ``name`` and report its framework's version and devices.

    A plugin that fails to import, for whatever reason, is reported, not raised, so that
    one broken plugin does not hide the others.

    Examples
    --------
    >>> import gcore
    >>> info = gcore.plugins.describe("numpy")
    >>> info.importable, info.framework
    (True, 'numpy')
    """
    eps = _entry_points()
    if name not in eps:
        raise LookupError(
            f"no gcore plugin named {name!r}; installed: {', '.join(available()) or 'none'}"
        )
    module = eps[name].value
    try:
        mod = plugin(name)
    except Exception as err:
        return PluginInfo(name, module, importable=False, error=str(err.__cause__ or err))
    framework = getattr(mod, "FRAMEWORK", None)
    version = None
    if framework is not None:
        try:
            version = importlib.metadata.version(framework)
        except importlib.metadata.PackageNotFoundError:
            version = getattr(
                importlib.import_module(framework.replace("-", "_")), "__version__", None
            )
    try:
        devices = tuple(mod.devices()) if hasattr(mod, "devices") else ()
        error = None
    except Exception as err:  # a broken driver must not break `gcore info`
        devices, error = (), f"devices() failed: {err}"
    return PluginInfo(name, module, True, framework, version, devices, error)
