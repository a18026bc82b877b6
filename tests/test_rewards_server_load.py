"""A reward server under load and through faults, on 127.0.0.1.

Load: concurrent clients (one per simulated rank) against one server, every score returned to the
row that sent it, every id scored exactly once, the server's memory flat (the full 8 x 50 x 16 size
is ``bench/reward_server_load.py``, run here only with ``-m slow``). Faults: the server killed
mid-GRPO-run and restarted (the run retries through it), or killed for good (the run stops with
one line naming the server's URL and the last checkpoint, or drops the rows, per
``reward_on_error``). The token the runs use appears nowhere in their run folders or output.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from reward_server_helpers import REPO, reward_server, start_server, stop, wait_for_url
from transformers import TrainerCallback

from policies.commands import command
from pretrain_sft.checkpoints import prepare_output_dir
from rl.curves import read_metrics
from rl.grpo import build_parser, build_trainer, train_and_save

sys.path.insert(0, str(REPO / "bench"))
import reward_server_load  # noqa: E402

TOKEN = "grpo-run-token-" + "9f8e7d6c5b4a" * 2
TOKEN_ENV = "T_REWARD_SERVER_TOKEN"
MIB = 2**20


# ------------------------------------------------------------------ load
def check_load(result: dict) -> None:
    for run in ("baseline", "load"):
        assert result[run]["lost"] == 0, result[run]["errors"]
        assert result[run]["mismatched"] == 0
    assert (result["duplicated"], result["never_scored"], result["unexpected"]) == (0, 0, 0)
    assert not result["token_in_server_output"]


def test_concurrent_clients_get_their_own_scores_once_each_and_server_memory_stays_flat(tmp_path):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench/reward_server_load.py: tiny per-image tensors, no OpenMP spinning
    try:
        result = reward_server_load.run(clients=8, requests=6, rows=16, size=32, workdir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    check_load(result)
    assert result["load"]["requests"] == 48 and result["load"]["images_per_s"] > 0
    # Flat: 48 requests of 16 images more than the warm-up add less than the images they carried, decoded.
    carried = 48 * 16 * 3 * 32 * 32 * 4 / MIB
    assert result["rss_end_mib"] - result["rss_start_mib"] < max(carried, 8.0)


@pytest.mark.slow
def test_the_load_benchmark_at_full_size_loses_nothing(tmp_path):
    out = tmp_path / "load.json"
    command_line = [sys.executable, str(REPO / "bench" / "reward_server_load.py"), "--json", str(out)]
    done = subprocess.run(command_line, capture_output=True, text=True, timeout=1200, cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    check_load(result)
    assert result["load"]["requests"] == 8 * 50
    assert result["rss_end_mib"] - result["rss_half_mib"] < 16.0  # the second half of the load adds ~nothing
    assert "| 8 | 400 x 16 |" in done.stdout


# ------------------------------------------------------------------ faults during a GRPO run
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class KillServer(TrainerCallback):
    """At the end of step ``step``, kill the reward server (SIGKILL) and optionally start another on its port."""

    def __init__(self, server, step: int, restart: Callable[[], subprocess.Popen] | None = None):
        self.server, self.step, self.restart = server, step, restart
        self.restarted: subprocess.Popen | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step and self.server.process.poll() is None:
            self.server.process.kill()
            self.server.process.wait(timeout=30)
            if self.restart is not None:
                self.restarted = self.restart()  # not waited for: the run's retries have to ride over the start


def grpo_with(callback: TrainerCallback):
    """``simplear-rl grpo`` (same steps as ``rl.grpo.main``, same one-line errors) with ``callback`` added."""

    @command("grpo")
    def main(argv: list[str]) -> int:
        script, args, model_args = build_parser().parse_args_and_config(argv)
        resume = prepare_output_dir(args)
        train_and_save(build_trainer(script, args, model_args, callbacks=[callback]), args, resume)
        return 0

    return main


def grpo_argv(out: Path, url: str, max_steps: int, on_error: str, **remote: object) -> list[str]:
    reward = {"name": "remote", "as": "served", "url": url, "rewards": ["color_region"], "token_env": TOKEN_ENV,
              **remote}
    return ["--config", str(REPO / "recipes" / "tiny" / "grpo.yaml"), "--train_prompts",
            str(REPO / "recipes" / "tiny" / "prompts.jsonl"), "--output_dir", str(out), "--max_steps", str(max_steps),
            "--sample_every", "0", "--save_steps", "2", "--reward_on_error", on_error, "--rewards", json.dumps(reward)]


def token_anywhere(folder: Path) -> list[Path]:
    """Files under ``folder`` (checkpoints included, binary or not) whose bytes hold the token."""
    return [p for p in folder.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()]


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)


def test_a_grpo_run_retries_through_a_reward_server_killed_and_restarted(tmp_path, token_env, capfd):
    port = str(free_port())
    flags = ("--port", port, "--token_env", TOKEN_ENV)
    with reward_server("color_region", tmp_path / "server.log", *flags) as server:
        restart = KillServer(server, step=1, restart=lambda: start_server("color_region", tmp_path / "again.log", *flags))
        out = tmp_path / "run"
        try:
            # Enough retries (backoff capped at 2 s) to wait for a new server process to import and listen.
            status = grpo_with(restart)(grpo_argv(out, server.url, 3, "fail", retries=40, timeout=30))
            assert restart.restarted is not None
            assert wait_for_url(restart.restarted, tmp_path / "again.log") == server.url
        finally:
            if restart.restarted is not None:
                stop(restart.restarted)
    printed = capfd.readouterr()
    assert status == 0, printed.err[-2000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert all(math.isfinite(r["rewards/served/mean"]) for r in records)
    assert all(r.get("rewards/served/dropped", 0) == 0 for r in records)
    assert (out / "train_summary.json").exists() and (out / "model.safetensors").exists()
    assert token_anywhere(out) == [] and TOKEN not in printed.out + printed.err


def test_a_grpo_run_stops_with_one_line_naming_the_url_and_the_last_checkpoint(tmp_path, token_env, capfd):
    with reward_server("color_region", tmp_path / "server.log", "--token_env", TOKEN_ENV) as server:
        out = tmp_path / "fail"
        status = grpo_with(KillServer(server, step=2))(grpo_argv(out, server.url, 3, "fail", retries=1, timeout=5))
    err = capfd.readouterr().err
    assert status == 1
    line = [x for x in err.splitlines() if x.startswith("simplear-rl grpo: error:")]
    assert len(line) == 1, err[-3000:]
    assert f"reward server at {server.url}: cannot reach {server.url}/score" in line[0]
    assert f"Training stopped at step 2: the last complete checkpoint is {out / 'checkpoint-2'}" in line[0]
    assert "--resume_from_checkpoint last" in line[0]
    assert TOKEN not in err and token_anywhere(out) == []


@pytest.mark.slow  # the suite-level drop path is in test_rewards_server.py; this is the same through a whole run
def test_a_grpo_run_drops_the_rows_of_a_killed_reward_server_with_on_error_drop(tmp_path, token_env, capfd):
    with reward_server("color_region", tmp_path / "server.log", "--token_env", TOKEN_ENV) as server:
        out = tmp_path / "drop"
        status = grpo_with(KillServer(server, step=1))(grpo_argv(out, server.url, 3, "drop", retries=0, timeout=5))
    assert status == 0, capfd.readouterr().err[-2000:]
    records = read_metrics(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0].get("rewards/served/dropped", 0) == 0
    assert all(r["rewards/served/dropped"] == 4 for r in records[1:])  # every row of the steps after the kill
    assert token_anywhere(out) == []
