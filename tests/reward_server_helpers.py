"""A real ``simplear-rl rewards serve`` process for the tests, and a served reward that is too slow.

The server listens on 127.0.0.1 only, on a free port the OS picks (the URL is read from its first
line of output). It stops when the test's ``with`` block ends (SIGTERM, then SIGKILL), and by
itself if the test process dies (``--exit_with_parent``) or forgets it (``--idle_timeout``).

Imported by the server process too (``reward_server_helpers:slow_brightness`` in a spec), so it
imports nothing from the test suite.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:  # the parent processes of the tests import this module too: no torch at import
    import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
EXAMPLE_PLUGIN = TESTS / "plugins" / "simplear_rl_example_plugin"
#: What the server process may import by dotted path: this module and the example plugin.
SERVER_PYTHONPATH = (TESTS, EXAMPLE_PLUGIN)
_URL_LINE = re.compile(r" on (http://127\.0\.0\.1:\d+) ")


def slow_brightness(images: torch.Tensor, prompts: list[str], seconds: float = 2.0) -> torch.Tensor:
    """Mean brightness, after sleeping ``seconds``: a served reward slower than its client's timeout."""
    time.sleep(seconds)
    return images.mean(dim=(1, 2, 3))


@dataclass
class ServerProcess:
    """A running reward server: its URL, process and output file."""

    url: str
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def server_command(spec: Path | str, *extra: str) -> list[str]:
    """``simplear-rl rewards serve`` on a free loopback port that stops with its parent or when idle."""
    return [
        sys.executable, "-m", "rl.cli", "rewards", "serve", "--spec", str(spec), "--host", "127.0.0.1",
        "--port", "0", "--device", "cpu", "--exit_with_parent", "--idle_timeout", "600", *extra,
    ]


def server_env() -> dict[str, str]:
    paths = [str(p) for p in SERVER_PYTHONPATH] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(paths)}


def wait_for_url(process: subprocess.Popen, log: Path, timeout: float = 120.0) -> str:
    """The URL the server prints once it listens; fails with its output if it exits or never gets there."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        match = _URL_LINE.search(text)
        if match:
            return match.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"the reward server exited with status {process.returncode}:\n{text}")
        time.sleep(0.1)
    raise RuntimeError(f"the reward server printed no URL within {timeout:g} s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited after a few seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def reward_server(spec: Path | str, log: Path, *extra: str) -> Iterator[ServerProcess]:
    """Start ``simplear-rl rewards serve --spec SPEC`` (plus ``extra`` flags), yield it, stop it."""
    with open(log, "w") as out:
        process = subprocess.Popen(server_command(spec, *extra), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                   env=server_env())
    try:
        yield ServerProcess(wait_for_url(process, log), process, log)
    finally:
        stop(process)
