"""The ``gcore`` command: ``gcore info`` (and ``gcore demo`` when its extra is installed)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys
from collections.abc import Sequence

from . import plugins
from ._version import __version__


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def info(args: argparse.Namespace) -> int:
    """Print gcore's version, its dependencies and every plugin's status."""
    print(f"gcore {__version__} (distribution gradient-centralization)")
    print(f"python {platform.python_version()} on {platform.platform()}")
    for dep in ("array-api-compat", "array-api-extra"):
        print(f"{dep} {_dist_version(dep)}")
    names = plugins.available()
    print(f"plugins ({len(names)}):")
    for name in names:
        p = plugins.describe(name)
        if p.importable:
            devices = ", ".join(p.devices) or "none found"
            print(
                f"  {name:<8} installed, importable  {p.framework} {p.framework_version}"
                f"  devices: {devices}"
            )
            if p.error:
                print(f"           note: {p.error}")
        else:
            print(f"  {name:<8} installed, NOT importable: {p.error}")
            print(f"           pip install 'gradient-centralization[{name}]'")
    return 0


def _delegate(module: str, extra: str):
    def run(args: argparse.Namespace) -> int:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            print(
                f"gcore: `{args.command}` needs the {extra!r} extra ({err}); install it with "
                f"pip install 'gradient-centralization[{extra}]'",
                file=sys.stderr,
            )
            return 2
        return int(mod.main(args.rest) or 0)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gcore`` console script."""
    parser = argparse.ArgumentParser(
        prog="gcore", description="Gradient Centralization for every Python array library."
    )
    parser.add_argument("--version", action="version", version=f"gcore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="versions, installed plugins and their devices")
    p.set_defaults(func=info)
    for name, module, extra, text in _SUBCOMMANDS:
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=_delegate(module, extra))
    # A delegated command gets its arguments verbatim: argparse's REMAINDER positional
    # rejects leading options (`gcore demo --quick` → "unrecognized arguments").
    argv = list(sys.argv[1:] if argv is None else argv)
    for name, module, extra, _ in _SUBCOMMANDS:
        if argv[:1] == [name]:
            return _delegate(module, extra)(argparse.Namespace(command=name, rest=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


# Commands whose code lives outside the core (it imports frameworks): name, module, extra.
_SUBCOMMANDS: list[tuple[str, str, str, str]] = [
    ("demo", "gcore_demo", "demo", "train with and without GC and compare"),
]
