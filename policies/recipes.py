"""Reading recipes: TRL's ``TrlParser`` with errors a recipe user can act on.

``TrlParser`` already does the work (``--config x.yaml`` sets defaults, ``--key value`` overrides,
an ``env:`` block sets variables). This subclass only changes what a mistake looks like: a YAML
syntax error names the file and line, an unknown key names itself and the closest valid keys,
and argparse usage errors raise instead of exiting, so every command reports them in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from trl import TrlParser

from .commands import DEBUG_HELP, BadInput, FinishedOnUse, HelpFormatter

#: Packages whose dataclass fields are this project's own recipe keys (listed first in --help).
OWN_PACKAGES = ("policies", "rewards", "rl", "pretrain_sft", "bench")
OWN_GROUP = "recipe keys (simplear-rl)"
CONFIG_HELP = "recipe YAML: its keys set the defaults, and any --key value on the command line overrides them"
RESUME_HELP = ("`last` (the newest complete checkpoint-N in output_dir) or a checkpoint folder to continue from; "
               "unset: start a new run")
#: Recipe keys naming files or folders the command reads (resolved beside the recipe when not found from here).
INPUT_PATH_KEYS = ("train_prompts", "eval_prompts", "monitor_prompts", "cache", "images", "model_name_or_path",
                   "base_model", "codec_path")
#: Parser-only flags that are no recipe keys.
PARSER_FLAGS = ("config", "simplear_debug", "simplear_task", "help")


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


def field_owner(dataclass_type: type, name: str) -> type:
    """The class in ``dataclass_type``'s MRO that declares field ``name`` (an override counts as a declaration)."""
    for klass in dataclass_type.__mro__:
        if name in klass.__dict__.get("__annotations__", {}):
            return klass
    return dataclass_type


def group_title(klass: type) -> str:
    """``recipe keys (simplear-rl)`` for this project's own dataclasses, else ``inherited from <pkg>.<Class>``."""
    package = klass.__module__.split(".")[0]
    if package in OWN_PACKAGES:
        return OWN_GROUP
    return f"inherited from {package}.{klass.__name__}"


class RecipeParser(FinishedOnUse, TrlParser):
    """``TrlParser`` whose mistakes are one-line :class:`BadInput` errors naming the fix.

    Prefixes of option names are not accepted (``--learning_rat`` is an unknown key, not
    ``learning_rate``), so a typo is never silently taken for another key. ``command`` names the
    subcommand in the usage line; ``--help`` lists this project's keys first, then the inherited
    TRL / transformers keys, each group under its source.
    """

    def __init__(self, dataclass_types=None, command: str | None = None, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        if command is not None:
            kwargs.setdefault("prog", f"simplear-rl {command}")
            kwargs.setdefault("usage", f"simplear-rl {command} [--config RECIPE.yaml] [--key value ...]")
        super().__init__(dataclass_types, **kwargs)
        self._own_help(dataclass_types or [])

    def _own_help(self, dataclass_types) -> None:
        """Our --config and --debug (transformers' own ``debug`` key is dropped), ``last`` for resuming, groups."""
        for action in list(self._actions):
            if action.dest == "debug":
                self._drop(action)
                # the dataclass still reads `debug` from the namespace: keep transformers' default for it
                self.set_defaults(debug=action.default)
            elif action.dest == "resume_from_checkpoint":
                action.help = RESUME_HELP
        # default=SUPPRESS: neither reaches the parsed namespace (TrlParser reads --config itself; --debug is
        # taken off the command line by policies.commands before parsing)
        self.add_argument("--config", metavar="RECIPE.yaml", default=argparse.SUPPRESS, help=CONFIG_HELP)
        self.add_argument("--debug", dest="simplear_debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        types = dataclass_types if isinstance(dataclass_types, (list, tuple)) else [dataclass_types]
        owners = {f.name: field_owner(t, f.name) for t in types for f in dataclasses.fields(t)}
        groups: dict[str, argparse._ArgumentGroup] = {}
        general = self._optionals
        for action in list(general._group_actions):
            owner = owners.get(action.dest) or owners.get(action.dest.removeprefix("no_"))
            if owner is None:
                continue
            title = group_title(owner)
            if title not in groups:
                groups[title] = self.add_argument_group(title)
            general._group_actions.remove(action)
            groups[title]._group_actions.append(action)
        own = [g for t, g in groups.items() if t == OWN_GROUP]
        rest = [g for g in self._action_groups if g not in own and g is not general and g not in groups.values()]
        self._action_groups = [*rest, general, *own, *(g for g in groups.values() if g not in own)]

    def _drop(self, action: argparse.Action) -> None:
        self._remove_action(action)
        for option in action.option_strings:
            self._option_string_actions.pop(option, None)
        for group in self._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)

    def known_keys(self) -> list[str]:
        """Every key a recipe or the command line may set."""
        return sorted({a.dest for a in self._actions if a.dest not in PARSER_FLAGS} | {"env"})

    def error(self, message: str) -> NoReturn:
        raise BadInput(f"{message} (see `--help`)")

    def parse_args_and_config(self, args=None):
        """Parse ``--config`` and overrides like ``TrlParser``; unknown keys are refused by name."""
        args = list(sys.argv[1:] if args is None else args)
        known = self.known_keys()
        path, recipe = None, {}
        if "--config" in args:
            index = args.index("--config")
            if index + 1 >= len(args):
                raise BadInput("--config needs a recipe path")
            path = args[index + 1]
            recipe = read_yaml_mapping(path)
            unknown = [k for k in recipe if k not in known]
            if unknown:
                raise BadInput(unknown_keys_message(unknown, known, f"recipe {path!r}"))
        *parsed, remaining = super().parse_args_and_config(args, return_remaining_strings=True)
        flags = [s[2:].split("=")[0] for s in remaining if s.startswith("--")]
        if remaining:
            unknown = flags or remaining
            raise BadInput(unknown_keys_message(unknown, known, "the command line"))
        if path is not None:
            resolve_recipe_inputs(parsed, path, recipe, args)
        return tuple(parsed)


def resolve_recipe_path(value: str, recipe: str | Path) -> str:
    """``value`` as given when it exists from the current folder (or is absolute), else relative to the
    recipe file's folder when it exists there; otherwise unchanged (the command names what is missing)."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return value
    beside = Path(recipe).resolve().parent / path
    return str(beside) if beside.exists() else value


def resolve_recipe_inputs(parsed: list, recipe: str, mapping: dict, argv: list[str]) -> None:
    """Input paths set in the recipe file ``recipe`` (its keys: ``mapping``; :data:`INPUT_PATH_KEYS`) resolve
    beside it when they are not found from here, so a recipe runs from any folder. Values given on the command
    line stay as typed."""
    typed = {arg[2:].split("=")[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    for key in INPUT_PATH_KEYS:
        value = mapping.get(key)
        if key in typed or not isinstance(value, str):
            continue
        for config in parsed:
            if getattr(config, key, None) == value:
                setattr(config, key, resolve_recipe_path(value, recipe))
