"""The documentation does not lie about the command line and does not point nowhere.

- Every command line in README.md, docs/*.md and bench/RESULTS.md that starts with ``simplear-rl`` (inside a
  fenced code block) names a real subcommand (and a real ``rewards`` / ``eval`` sub-subcommand), and every
  ``--flag`` it uses appears in that command's own ``--help`` (``--x-y`` counts as ``--x_y``).
- Every relative markdown link resolves to an existing file, and every ``#anchor`` into a markdown file names
  one of its headings (GitHub's anchor rules).
- The README stays a front door (at most 300 lines) whose tour runs from any folder: its paths into the
  repository are spelled ``$REPO/...`` and exist.
- The plugin example shown in docs/rewards.md is the plugin the test suite installs.
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest

from rl import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
if (ROOT / "bench" / "RESULTS.md").exists():
    DOCS.append(ROOT / "bench" / "RESULTS.md")

FENCE = re.compile(r"^\s*(```|~~~)")
#: Shell words that end the simplear-rl part of a line (pipes, redirections, command separators).
SHELL_ENDS = {"|", "||", "&&", ";", "&", ">", ">>", "<", "2>&1"}
#: A comment marking a command line that shows what a wrong flag does: its flags are not checked.
ON_PURPOSE = "# misspelt on purpose"
#: Top-level options of ``simplear-rl`` itself (rl/cli.py).
TOP_LEVEL_OPTIONS = {"-h", "--help", "help", "-V", "--version"}


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def split_fences(text: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """``(prose, code)``: the file's lines (1-based number, text) outside and inside fenced code blocks."""
    prose, code = [], []
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
            continue
        (code if inside else prose).append((number, line))
    return prose, code


def code_commands(path: Path) -> list[tuple[int, str]]:
    """Command lines starting with ``simplear-rl`` inside code blocks (backslash continuations joined, a
    leading ``$ `` prompt dropped), with the number of their first line."""
    _, code = split_fences(path.read_text(encoding="utf-8"))
    commands, pending, start, previous = [], "", 0, None
    for number, line in code:
        if pending and previous is not None and number != previous + 1:  # a new block: the continuation ended
            commands.append((start, pending))
            pending = ""
        previous = number
        if pending:
            pending += " " + line.strip()
        else:
            stripped = line.strip()
            if stripped.startswith("$ "):
                stripped = stripped[2:].lstrip()
            if not stripped.startswith("simplear-rl"):
                continue
            pending, start = stripped, number
        if pending.endswith("\\"):
            pending = pending[:-1].rstrip()
            continue
        commands.append((start, pending))
        pending = ""
    if pending:
        commands.append((start, pending))
    return commands


def command_words(line: str) -> list[str] | None:
    """The shell words of the simplear-rl command (comments stripped, cut at pipes / redirections), or None
    when the line is output printed by simplear-rl (``simplear-rl grpo: error: ...``), not a command."""
    words = shlex.split(line, comments=True)
    if any(word.endswith(":") for word in words[1:3]):
        return None
    for i, word in enumerate(words):
        if word in SHELL_ENDS or word.startswith((">", "2>")):
            return words[:i]
    return words


def flags_of(words: list[str]) -> list[str]:
    """The ``--flags`` a command line uses, ``[--optional value]`` brackets and ``=value`` removed."""
    flags = []
    for word in words:
        word = word.lstrip("[").rstrip("]")
        if word.startswith("--") and len(word) > 2:
            flags.append(word.split("=", 1)[0])
    return flags


def normal(flag: str) -> str:
    """``--x-y`` and ``--x_y`` are the same flag (every command accepts both)."""
    return "--" + flag[2:].replace("-", "_")


_HELP: dict[tuple[str, ...], str] = {}


def help_text(command: tuple[str, ...], capsys) -> str:
    """``simplear-rl COMMAND --help`` run in this process, stdout and stderr together (cached per command)."""
    if command not in _HELP:
        capsys.readouterr()
        try:
            code = cli.main([*command, "--help"])
        except SystemExit as exc:
            code = exc.code
        out = capsys.readouterr()
        text = out.out + out.err
        assert code in (0, None), f"`simplear-rl {' '.join(command)} --help` exited {code}:\n{text[-2000:]}"
        assert "Traceback" not in text, f"`simplear-rl {' '.join(command)} --help` printed a traceback:\n{text}"
        _HELP[command] = text
    return _HELP[command]


def sub_subcommands(help_: str) -> set[str]:
    """The choices of a command's sub-subcommand, read from its help's ``{a,b,c}``."""
    match = re.search(r"\{([\w,-]+)\}", help_)
    return set(match.group(1).split(",")) if match else set()


ALL_COMMANDS = [(path, number, line) for path in DOCS for number, line in code_commands(path)]


@pytest.mark.parametrize(
    "path, number, line", ALL_COMMANDS, ids=[f"{rel(p)}:{n}" for p, n, _ in ALL_COMMANDS]
)
def test_documented_simplear_rl_command_names_a_real_subcommand_and_only_flags_its_help_lists(
    path, number, line, capsys
):
    """A command line a reader copies from the docs must not fail on a misspelt subcommand or a flag that
    does not exist (or no longer exists)."""
    where = f"{rel(path)}:{number}: {line}"
    try:
        words = command_words(line)
    except ValueError as exc:
        pytest.fail(f"{where}: cannot be split as a shell line ({exc})")
    if words is None:
        pytest.skip("output printed by simplear-rl, not a command")
    assert words[0] == "simplear-rl", where
    args = words[1:]
    if not args or args[0] in TOP_LEVEL_OPTIONS:
        return
    name = args[0]
    assert name in cli.SUBCOMMANDS, f"{where}: no subcommand {name!r} (there are {sorted(cli.SUBCOMMANDS)})"
    command = (name,)
    help_ = help_text(command, capsys)
    choices = sub_subcommands(help_) if name in ("rewards", "eval") else set()
    if choices:
        rest = [w for w in args[1:] if not w.startswith("-")]
        assert rest and rest[0] in choices, f"{where}: `simplear-rl {name}` needs one of {sorted(choices)}"
        command = (name, rest[0])
        help_ = help_text(command, capsys)
    if ON_PURPOSE in line:
        return  # a line that shows the error a wrong flag gives
    known = {normal(flag) for flag in re.findall(r"--[A-Za-z0-9][\w-]*", help_)}
    unknown = [flag for flag in flags_of(args) if normal(flag) not in known]
    assert not unknown, (
        f"{where}: {unknown} not in `simplear-rl {' '.join(command)} --help`"
    )


def test_the_readme_tour_commands_are_found_and_checked():
    """The checker must see the README's tour (generate -> rewards score -> grpo -> plot); an extractor that
    found nothing would pass every doc silently."""
    readme = [line for _, line in code_commands(ROOT / "README.md")]
    for start in ("simplear-rl generate --prompts_file $REPO/", "simplear-rl rewards score --rewards color_region",
                  "simplear-rl grpo --config $REPO/recipes/tiny/grpo.yaml", "simplear-rl plot runs/tiny"):
        assert any(line.startswith(start) for line in readme), f"README tour lost `{start} ...`"
    assert len(ALL_COMMANDS) >= 40, f"only {len(ALL_COMMANDS)} simplear-rl command lines found in the docs"


def test_readme_tour_runs_from_any_folder_because_its_repository_paths_are_spelled_from_repo():
    """The tour must work from a scratch folder: every path it reads from the repository is `$REPO/...` and
    exists there, and no tour command names a bare `recipes/...` path (which only works from the root)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    tour = text.split("## A ten-minute tour", 1)[1].split("\n## ", 1)[0]
    _, code = split_fences(tour)
    lines = [line for _, line in code if line.strip().startswith("simplear-rl")]
    assert len(lines) >= 4, "the tour's commands are missing"
    for line in lines:
        for word in shlex.split(line, comments=True):
            if word.startswith("$REPO/"):
                assert (ROOT / word[len("$REPO/"):]).exists(), f"tour path {word} does not exist in the repository"
            assert not word.startswith("recipes/"), f"tour word {word!r} only resolves from the repository root"


def test_readme_is_a_front_door_of_at_most_300_lines():
    """Reference material belongs in docs/; the README is what a newcomer reads first."""
    count = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert count <= 300, f"README.md has {count} lines; move reference material to docs/"


def repo_paths_in_code(path: Path) -> list[tuple[int, str]]:
    """Concrete ``recipes/...`` / ``bench/...`` / ``tests/...`` files named in code blocks (no placeholders)."""
    _, code = split_fences(path.read_text(encoding="utf-8"))
    found = []
    for number, line in code:
        for match in re.finditer(r"(?:\$REPO/)?\b((?:recipes|bench|tests)/[\w./-]+)", line):
            word = match.group(1).rstrip(".,:;)")
            if any(c in word for c in "{}*<>") or "..." in word:
                continue
            if not word.endswith((".yaml", ".yml", ".jsonl", ".py", ".sh", ".toml", ".txt")):
                continue  # folders and the outputs a command writes (results.json, ...)
            found.append((number, word))
    return found


@pytest.mark.parametrize("path", DOCS, ids=[rel(p) for p in DOCS])
def test_repository_paths_in_code_blocks_exist(path):
    """A recipe, script or test file a documented command names must exist (paths renamed or removed)."""
    missing = [f"{rel(path)}:{n}: {word}" for n, word in repo_paths_in_code(path) if not (ROOT / word).exists()]
    assert not missing, "missing files named in code blocks:\n" + "\n".join(missing)


# --- links -------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+).+?\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lower case, punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, with GitHub's -1, -2 suffixes for repeated headings."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    seen: Counter[str] = Counter()
    result = set()
    for _, line in prose:
        match = HEADING.match(line)
        if not match:
            continue
        base = github_anchor(match.group(2))
        anchor = base if seen[base] == 0 else f"{base}-{seen[base]}"
        seen[base] += 1
        result.add(anchor)
    return result


def relative_links(path: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of every link outside code (fenced blocks and inline code) that is not a URL."""
    prose, _ = split_fences(path.read_text(encoding="utf-8"))
    links = []
    for number, line in prose:
        line = INLINE_CODE.sub("", line)
        for match in LINK.finditer(line):
            target = match.group(2)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            links.append((number, target))
    return links


def test_github_anchor_follows_githubs_rules():
    """The link checker's anchor rule itself (so a passing link test means the links work on GitHub)."""
    assert github_anchor("Rollout backends: eager and compiled") == "rollout-backends-eager-and-compiled"
    assert github_anchor("The check: `bench/gpu_check.sh`") == "the-check-benchgpu_checksh"
    assert github_anchor("`logprob_mode`: guided vs conditional") == "logprob_mode-guided-vs-conditional"
    assert github_anchor("Qwen2.5-0.5B dimensions, real vocabulary") == "qwen25-05b-dimensions-real-vocabulary"
    assert github_anchor("Numerics: sampler–trainer gap (issue 10)") == "numerics-samplertrainer-gap-issue-10"


@pytest.mark.parametrize("path", DOCS, ids=[rel(p) for p in DOCS])
def test_every_relative_link_resolves_to_a_file_and_heading(path):
    """Docs moved between README and docs/ must not leave links to files or sections that are not there."""
    broken = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        target_path = path if not file_part else (path.parent / file_part).resolve()
        if not target_path.exists():
            broken.append(f"{rel(path)}:{number}: {target} (no such file)")
            continue
        if anchor and target_path.suffix == ".md" and anchor not in anchors(target_path):
            broken.append(f"{rel(path)}:{number}: {target} (no heading #{anchor} in {target_path.name})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_link_every_docs_page_from_the_readme():
    """Every page in docs/ is reachable from the front door."""
    linked = {(ROOT / target.partition("#")[0]).resolve() for _, target in relative_links(ROOT / "README.md")}
    orphans = [rel(p) for p in sorted((ROOT / "docs").glob("*.md")) if p.resolve() not in linked]
    assert not orphans, f"docs pages not linked from README.md: {orphans}"


def test_rewards_doc_plugin_example_is_the_plugin_the_tests_install():
    """The plugin example a reader copies (docs/rewards.md) is tests/plugins/simplear_rl_example_plugin, which
    tests/test_rewards_plugins.py pip-installs and scores with."""
    text = (ROOT / "docs" / "rewards.md").read_text(encoding="utf-8")
    plugin = ROOT / "tests" / "plugins" / "simplear_rl_example_plugin"
    assert "## Writing a reward plugin" in text
    for name in ("pyproject.toml", "simplear_rl_example_plugin/__init__.py"):
        assert (plugin / name).read_text(encoding="utf-8").strip() in text, f"docs/rewards.md example differs from {name}"
    assert "tests/plugins/simplear_rl_example_plugin" in text
