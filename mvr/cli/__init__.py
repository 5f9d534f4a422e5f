"""The ``mvr`` command line: one module per subcommand (each with ``add_parser`` and ``run``),
shared option groups in ``common``.

Errors of mvr's own hierarchy print as one ``mvr: error: ...`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import warnings

from ..errors import MvrError, closest

COMMANDS = ("index", "add", "delete", "optimize", "upgrade", "search", "rerank", "info", "list", "fde", "centroids", "pooled", "sparse", "tune", "train_projection", "eval", "serve")


def _modules():
    return {name: importlib.import_module(f".{name}", __name__) for name in COMMANDS}


class Parser(argparse.ArgumentParser):
    """argparse's parser with a usage error on one line, as mvr's own errors are (argparse prints
    the whole usage first: a dozen lines for ``mvr search``), saying where the options are told."""

    def __init__(self, *args, **kwargs):
        # no option by a prefix of its name: `mvr eval --run RUN` (mvr rerank's option) was taken for
        # --run-file and wrote over the run; an unknown option is refused with the one it may mean
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mvr", description="Multi-vector (late-interaction) retrieval.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in _modules().values():
        module.add_parser(sub)
    parser.commands = sub.choices  # each command's own parser, for its own errors
    return parser


def _unknown(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    """The error for arguments ``parser`` does not take, with the option each one may have meant."""
    options = {o.lower(): o for action in parser._actions for o in action.option_strings}  # -K meant -k as well
    meant = {e: _meant(e.split("=")[0].lower(), options) for e in extras if e.startswith("-")}
    hints = [f"{e}: did you mean {' or '.join(options[o] for o in m)}?" for e, m in meant.items() if m]
    return f"unrecognized arguments: {' '.join(extras)}" + (f" ({'; '.join(hints)})" if hints else "")


def _meant(given: str, options) -> list[str]:
    """The options ``given`` may have meant: those it begins (three at most), else the closest in spelling."""
    begun = [o for o in options if o.startswith(given) and given.startswith("--")]
    return begun if 0 < len(begun) <= 3 else closest(given, options)


def _say(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning on one line, as mvr's own are said (not a file, a line number and source)."""
    text = str(message)
    print(f"mvr: warning: {text.removeprefix('mvr: ')}" if text.startswith("mvr: ") else f"{category.__name__}: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    warnings.showwarning = _say
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    late = getattr(_modules()[args.command.replace("-", "_")], "LATE_POSITIONAL", None)
    plain = [e for e in extras if not e.startswith("-")]
    if plain and late and getattr(args, late) is None:  # after options (mvr search INDEX -k 5 QUERY): argparse takes one run of positionals only
        setattr(args, late, plain[0])
        extras.remove(plain[0])
    if extras:
        command = parser.commands[args.command]
        command.error(_unknown(command, extras))
    args.command_line = "mvr " + shlex.join(argv)  # kept in manifests and reports, to rerun them
    if getattr(args, "quiet", False):
        os.environ["MVR_QUIET"] = "1"  # this process only: no step reports progress
    try:
        return _modules()[args.command.replace("-", "_")].run(args)
    except MvrError as exc:
        print(f"mvr: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mvr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # what reads the output went away (mvr search ... | head): stop quietly, as a Unix tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that flushing at exit does not fail again
        return 141
    except MemoryError:
        print("mvr: error: out of memory; ask for less (a smaller --batch-size or -k, fewer FDE dimensions) or use a machine with more.", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a refused permission: one line, not a traceback
        print(f"mvr: error: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}.", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
