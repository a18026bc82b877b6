"""A real ``simplear-rl rewards serve`` process for the tests, and served rewards the tests can see into:
one too slow, one that reads back the id each image carries (and logs what it scored).

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
_URL_LINE = re.compile(r" on (https?://127\.0\.0\.1:\d+) ")
#: Ids an image can carry in its top-left pixel (red * 256 + green).
MAX_ID = 256 * 256


def slow_brightness(images: torch.Tensor, prompts: list[str], seconds: float = 2.0) -> torch.Tensor:
    """Mean brightness, after sleeping ``seconds``: a served reward slower than its client's timeout."""
    time.sleep(seconds)
    return images.mean(dim=(1, 2, 3))


def image_id(images: torch.Tensor, prompts: list[str], log: str | None = None, seconds: float = 0.0) -> torch.Tensor:
    """The id each image carries (see :func:`tagged_images`), after sleeping ``seconds``; with ``log``, the ids
    scored are appended to that file, one line per request, so a test sees what the server really scored."""
    time.sleep(seconds)
    pixel = (images[:, :2, 0, 0] * 255).round()
    ids = pixel[:, 0] * 256 + pixel[:, 1]
    if log:
        with open(log, "a") as f:
            f.write(" ".join(str(int(i)) for i in ids.tolist()) + "\n")
    return ids


def tagged_images(ids: list[int], size: int = 16, seed: int = 0) -> torch.Tensor:
    """Noise images ``[len(ids),3,size,size]`` in [0,1] whose top-left pixel carries each id (8-bit exact)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    images = (torch.randint(0, 256, (len(ids), 3, size, size), generator=generator) / 255.0)
    for row, i in enumerate(ids):
        assert 0 <= i < MAX_ID
        images[row, 0, 0, 0], images[row, 1, 0, 0] = (i // 256) / 255.0, (i % 256) / 255.0
    return images


def scored_ids(log: Path) -> list[int]:
    """Every id the ``image_id`` reward logged, in the order scored."""
    return [int(i) for line in log.read_text().splitlines() for i in line.split()] if log.exists() else []


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux ``/proc``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """``(cert.pem, key.pem)``: a fresh self-signed certificate for 127.0.0.1 made with the ``openssl`` CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


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


def start_server(spec: Path | str, log: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """``simplear-rl rewards serve --spec SPEC`` (plus ``extra`` flags) started, its output going to ``log``."""
    with open(log, "w") as out:
        return subprocess.Popen(server_command(spec, *extra), stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                env={**server_env(), **(env or {})})


@contextlib.contextmanager
def reward_server(spec: Path | str, log: Path, *extra: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start ``simplear-rl rewards serve --spec SPEC`` (plus ``extra`` flags), yield it, stop it."""
    process = start_server(spec, log, *extra, env=env)
    try:
        yield ServerProcess(wait_for_url(process, log), process, log)
    finally:
        stop(process)
