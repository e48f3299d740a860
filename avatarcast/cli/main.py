"""The ``avatarcast`` command line: one verb per module in ``avatarcast.cli.commands``.

Every verb's module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Errors that are the user's to fix
(``AvatarcastError``) are printed as one line, ``error: ...``, with a non-zero exit status and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys

from avatarcast import __version__
from avatarcast.core.errors import AvatarcastError

# verb -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("avatarcast.cli.commands.prepare", "detect the face in a portrait and save a reusable avatar folder"),
    "render": ("avatarcast.cli.commands.render", "render a talking-avatar MP4 from a portrait and a speech recording"),
    "serve": ("avatarcast.cli.commands.serve", "run the live server: WebSocket speech in, WebRTC avatar out"),
    "storyboard": ("avatarcast.cli.commands.storyboard", "write the storyboard JSON Schema or validate a storyboard"),
    "eval": ("avatarcast_bench.commands.eval", "measure lip sync, identity, seams and jitter of a rendered video"),
    "bench": ("avatarcast.cli.commands.bench", "benchmarks: render speed, live latency, GPU kernels"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avatarcast",
        description="A real-time livestreaming avatar engine: a portrait becomes a talking avatar driven by speech.",
    )
    parser.add_argument("--version", action="version", version=f"avatarcast {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages (default: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run, _options=frozenset(a.dest for a in p._actions if a.option_strings))
    return parser


_OPTION_NAME = re.compile(r"`([a-z][a-z0-9_]*)`")


def as_flags(message: str, options: set[str] | frozenset[str]) -> str:
    """The library names settings by their parameter names in backticks (`` `size` ``); on the command line those
    that are this command's options read as its flags (``--size``)."""
    return _OPTION_NAME.sub(lambda m: "--" + m.group(1).replace("_", "-") if m.group(1) in options else m.group(0),
                            message)


class _OptionsAsFlags(logging.Filter):
    """Log lines name the command's options as flags, like its errors."""

    def __init__(self, options: set[str]) -> None:
        super().__init__()
        self.options = options

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if "`" in text:
            record.msg, record.args = as_flags(text, self.options), None
        return True


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    options = set(args._options)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_OptionsAsFlags(options))
    try:
        return int(args._run(args) or 0)
    except AvatarcastError as exc:
        print(f"error: {as_flags(str(exc), options)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
