"""How every ``simplear-rl`` command ends: exit codes, one-line errors, tracebacks behind ``--debug``.

======  ======================================================================================
exit    meaning
======  ======================================================================================
0       success
1       a runtime failure (a reward raised during training, out of memory, a crashed worker)
2       bad input, refused before or while reading it (a missing path, an unknown recipe key,
        a value out of range, a malformed file, an output folder that holds an earlier run)
======  ======================================================================================

Either way the command prints ONE line, ``simplear-rl <cmd>: error: <what and how to fix>``;
``--debug`` (or ``SIMPLEAR_RL_DEBUG=1``, which also reaches the commands a command starts) prints
the traceback above it.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
import traceback
from typing import Callable, NoReturn

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEBUG_ENV = "SIMPLEAR_RL_DEBUG"


class BadInput(ValueError):
    """Input a command refuses; raise it where no more specific ``ValueError``/``OSError`` fits."""


def is_bad_input(err: BaseException) -> bool:
    """Whether ``err`` reports bad input (exit 2) rather than a runtime failure (exit 1).

    Bad input is what the commands raise while checking what they were given: ``ValueError`` (bad
    values, keys, specs, caches) and ``OSError`` (missing or existing paths, unreadable files).
    Everything else (``RuntimeError`` and friends, including a reward that fails while scoring) is
    a runtime failure.
    """
    import yaml

    if isinstance(err, RuntimeError):  # e.g. RewardScoreError is both a RewardError and a RuntimeError
        return False
    return isinstance(err, (ValueError, OSError, yaml.YAMLError))


def one_line(text: str) -> str:
    """``text`` with its line breaks folded, so an error is always exactly one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def debug_requested(argv: list[str]) -> tuple[bool, list[str]]:
    """``(debug, argv without --debug)``; ``--debug VALUE`` is left alone (transformers' own option)."""
    argv = list(argv)
    debug = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
    for i, arg in enumerate(argv):
        if arg == "--debug" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            del argv[i]
            debug = True
            break
    return debug, argv


def command(name: str) -> Callable[[Callable[[list[str]], int | None]], Callable[[list[str] | None], int]]:
    """Decorate a command's ``main(argv)`` so every way out is an exit status and at most one error line.

    The wrapped function returns the status instead of raising, whether it is called by the
    ``simplear-rl`` dispatcher, by ``python -m``, by another command (the demo) or by a test.
    """

    def decorate(func: Callable[[list[str]], int | None]) -> Callable[[list[str] | None], int]:
        @functools.wraps(func)
        def main(argv: list[str] | None = None) -> int:
            debug, argv = debug_requested(sys.argv[1:] if argv is None else argv)
            before = os.environ.get(DEBUG_ENV)
            if debug:
                os.environ[DEBUG_ENV] = "1"  # nested commands and launched processes show theirs too
            try:
                return int(func(argv) or 0)
            except KeyboardInterrupt:
                print(f"simplear-rl {name}: interrupted", file=sys.stderr)
                return 130
            except Exception as err:  # noqa: BLE001 - the one place that turns errors into exit codes
                bad = is_bad_input(err)
                if debug:
                    traceback.print_exc()
                kind = "" if bad else f"{type(err).__name__}: "
                hint = "" if debug or bad else " (rerun with --debug for the traceback)"
                print(f"simplear-rl {name}: error: {kind}{one_line(err)}{hint}", file=sys.stderr, flush=True)
                return EXIT_BAD_INPUT if bad else EXIT_FAILURE
            finally:
                if before is None:
                    os.environ.pop(DEBUG_ENV, None)
                else:
                    os.environ[DEBUG_ENV] = before

        return main

    return decorate


DEBUG_HELP = "print the traceback above the one-line error (also: SIMPLEAR_RL_DEBUG=1)"
FLAG_STYLE_NOTE = "Every --flag_name is also accepted as --flag-name."


def spellings(option: str) -> list[str]:
    """``--flag_name`` and ``--flag-name`` (every command accepts both); a short option as it is."""
    if not option.startswith("--"):
        return [option]
    name = option[2:]
    return list(dict.fromkeys(["--" + name.replace("-", "_"), "--" + name.replace("_", "-")]))


def mirrors_underscore(option: str, options: list[str]) -> bool:
    """Whether ``option`` is the ``--flag-name`` spelling of a ``--flag_name`` also in ``options``."""
    underscored = "--" + option[2:].replace("-", "_")
    return option.startswith("--") and underscored != option and underscored in options


def clean_help(text: str | None) -> str | None:
    """A help string argparse can print: literal ``%`` escaped (argparse %-formats help) and RST ````x```` shown as `x`."""
    if not text or text is argparse.SUPPRESS:
        return text
    return re.sub(r"%(?!\()", "%%", text.replace("``", "`"))


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help text for every command: one spelling per flag, a default only where it says something new.

    The description and epilog keep their line breaks (they are written as paragraphs); a flag's
    default is appended unless it is None/False or the help already names a default.
    """

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings:
            return super()._format_action_invocation(action)
        # A --flag-name that only mirrors a --flag_name is covered by FLAG_STYLE_NOTE: print one spelling.
        primary = [s for s in action.option_strings if not mirrors_underscore(s, action.option_strings)]
        if action.nargs == 0:
            return ", ".join(primary)
        args = self._format_args(action, self._get_default_metavar_for_optional(action))
        return ", ".join(f"{s} {args}" for s in primary)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
            or default == []
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def finish_parser(parser: argparse.ArgumentParser) -> None:
    """Make a built parser's help safe to print: escape every help string, add ``--flag-name`` aliases.

    Applied recursively to sub-commands. Called once the parser has all its flags.
    """
    if getattr(parser, "_simplear_finished", False):
        return
    parser._simplear_finished = True
    for action in parser._actions:
        action.help = clean_help(action.help)
        for option in list(action.option_strings):
            for alias in spellings(option):
                if alias not in parser._option_string_actions:
                    action.option_strings.append(alias)
                    parser._option_string_actions[alias] = action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                finish_parser(sub)
    parser.description = clean_help(parser.description)
    parser.epilog = clean_help(parser.epilog)


class FinishedOnUse:
    """Parser mixin: :func:`finish_parser` runs when the parser is first used, so flags added after
    construction (e.g. a command's extra ``--task``) get their aliases and escaped help too."""

    def parse_known_args(self, args=None, namespace=None):
        finish_parser(self)
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        finish_parser(self)
        return super().format_help()


class CommandParser(FinishedOnUse, argparse.ArgumentParser):
    """``argparse`` whose usage errors raise :class:`BadInput` (one line, exit 2) instead of exiting.

    Prefixes of option names are not accepted, so a typo is never silently taken for another flag.
    Every ``--flag_name`` is accepted as ``--flag-name`` too, and every command takes ``--debug``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs["epilog"] = f"{kwargs['epilog']}\n\n{FLAG_STYLE_NOTE}" if kwargs.get("epilog") else FLAG_STYLE_NOTE
        super().__init__(*args, **kwargs)
        self.add_argument("--debug", action="store_true", help=DEBUG_HELP)

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see `{self.prog} --help`)")
