"""Reading recipes: TRL's ``TrlParser`` with errors a recipe user can act on.

``TrlParser`` already does the work (``--config x.yaml`` sets defaults, ``--key value`` overrides,
an ``env:`` block sets variables). This subclass only changes what a mistake looks like: a YAML
syntax error names the file and line, an unknown key names itself and the closest valid keys,
and argparse usage errors raise instead of exiting, so every command reports them in one line.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from trl import TrlParser

from .commands import BadInput


def read_yaml_mapping(path: str | Path, what: str = "recipe") -> dict:
    """The mapping a YAML file (a recipe, a spec) holds; syntax errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "an unknown line"
        raise BadInput(f"{what} {str(path)!r} is not valid YAML at {where}: {err.problem}") from None
    except yaml.YAMLError as err:
        raise BadInput(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise BadInput(f"{what} {str(path)!r} must hold a YAML mapping of keys, not a {type(data).__name__}")
    return data


def unknown_keys_message(unknown: list[str], known: list[str], where: str) -> str:
    """``unknown key `lr` in WHERE (did you mean `learning_rate`?)`` for one or more keys."""
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        close += [k for k in known if key in k and k not in close][: 3 - len(close)] if len(key) >= 3 else []
        hint = f" (did you mean {', '.join(f'`{k}`' for k in close)}?)" if close else ""
        parts.append(f"`{key}`{hint}")
    noun = "key" if len(unknown) == 1 else "keys"
    return f"unknown {noun} {'; '.join(parts)} in {where}; `--help` lists every valid key"


class RecipeParser(TrlParser):
    """``TrlParser`` whose mistakes are one-line :class:`BadInput` errors naming the fix.

    Prefixes of option names are not accepted (``--learning_rat`` is an unknown key, not
    ``learning_rate``), so a typo is never silently taken for another key.
    """

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)

    def known_keys(self) -> list[str]:
        """Every key a recipe or the command line may set."""
        return sorted({a.dest for a in self._actions if a.dest != "help"} | {"env"})

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see `--help`)")

    def parse_args_and_config(self, args=None):
        """Parse ``--config`` and overrides like ``TrlParser``; unknown keys are refused by name."""
        args = list(sys.argv[1:] if args is None else args)
        known = self.known_keys()
        if "--config" in args:
            index = args.index("--config")
            if index + 1 >= len(args):
                raise BadInput("--config needs a recipe path")
            path = args[index + 1]
            unknown = [k for k in read_yaml_mapping(path) if k not in known]
            if unknown:
                raise BadInput(unknown_keys_message(unknown, known, f"recipe {path!r}"))
        *parsed, remaining = super().parse_args_and_config(args, return_remaining_strings=True)
        flags = [s[2:].split("=")[0] for s in remaining if s.startswith("--")]
        if remaining:
            unknown = flags or remaining
            raise BadInput(unknown_keys_message(unknown, known, "the command line"))
        return tuple(parsed)
