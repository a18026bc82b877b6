"""The ``simplear-rl`` command: one dispatcher, each subcommand's logic in its own package.

Subcommands are imported lazily so ``simplear-rl rewards list`` does not pay for importing TRL.
"""

from __future__ import annotations

import importlib
import sys

#: subcommand -> (module, function, one-line help). Each function takes ``argv: list[str]``.
SUBCOMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("rl.demo", "main", "run the whole pipeline on the embedded tiny default (no weights)"),
    "generate": ("policies.generate", "main", "sample images from a policy with CFG"),
    "extract-tokens": ("pretrain_sft.extract", "main", "encode pictures (a folder, JSONL or datasets folder) into a token cache"),
    "pretrain": ("pretrain_sft.train", "main_pretrain", "pretrain a policy from a recipe"),
    "sft": ("pretrain_sft.train", "main_sft", "supervised fine-tuning from a recipe"),
    "grpo": ("rl.grpo", "main", "GRPO alignment from a recipe"),
    "rewards": ("rewards.cli", "main", "list registered rewards, score images on disk, serve rewards over HTTP"),
    "eval": ("rl.evaluate", "main", "benchmark layouts (geneval, dpg) and reward evaluation"),
    "ablate": ("rl.ablate", "main", "run recipe variants (e.g. short/long prompts) and compare them"),
    "plot": ("rl.plot", "main", "overlay reward curves of one or more runs"),
    "report": ("rl.run_report", "main", "rebuild a GRPO run's report.html / report.md (curves, alerts, filmstrip)"),
}
SUBCOMMANDS["export"] = ("rl.export", "main", "turn a run, checkpoint, LoRA run or sharded checkpoint into a plain HF folder")


def version() -> str:
    """The installed package's version (``unknown`` when run from a source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("simplear-rl")
    except PackageNotFoundError:
        return "unknown"


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: simplear-rl <command> [options]   (simplear-rl --version: the installed version)", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, _, help_) in SUBCOMMANDS.items()]
    lines += [
        "",
        "Run `simplear-rl <command> --help` for a command's options. Errors are one line; add --debug (or set",
        "SIMPLEAR_RL_DEBUG=1) for the traceback. Exit status: 0 success, 1 runtime failure, 2 bad input.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``simplear-rl <command> ...`` to the command's ``main(argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        print(f"simplear-rl {version()}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"simplear-rl: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name, _ = SUBCOMMANDS[name]
    func = getattr(importlib.import_module(module_name), func_name)
    result = func(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
