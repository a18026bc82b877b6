"""``simplear-rl rewards serve`` in a real process on 127.0.0.1, and the ``remote`` reward that calls it.

Remote scores equal local ones (built-in and plugin rewards), ``/health``, 4xx for bad requests,
a reward that raises on the server, a killed server (fail / drop), a slow server (timeout, no
hang), the server stopping by itself. A tiny GRPO run whose rewards are all remote, through a
server killed and restarted, is in test_rewards_server_load.py; tokens, TLS and capacity in
test_rewards_server_security.py.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from reward_server_helpers import (
    EXAMPLE_PLUGIN,
    REPO,
    reward_server,
    server_command,
    server_env,
    stop,
)
from rewards_helpers import BLUE, RED, canvas, demo_object, isolated_registry, paint  # noqa: F401

from rewards import RewardConfigError, RewardScoreError, build_rewards, cli
from rewards.http_client import BACKOFF_S
from rewards.png import to_base64_png

PLUGIN = "simplear_rl_example_plugin:PaletteCoverage"
SERVED = ["color_region", "object_count", "background", "example_palette", "gated_background", "slow"]
SLOW_SECONDS = 2.0
SPEC = f"""
rewards:
  - {{name: color_region, weight: 3.0}}   # weights are the caller's business: ignored by the server
  - {{name: object_count}}
  - {{name: background}}
  - {{name: "{PLUGIN}", min_fraction: 0.05}}
  - {{name: background, as: gated_background, gate: {{reward: color_region, threshold: 0.75}}}}
  - {{name: "reward_server_helpers:slow_brightness", as: slow, seconds: {SLOW_SECONDS}}}
"""
LIMITS = ["--max_batch", "8", "--max_body_mb", "1", "--max_pixels", "10000"]
LEFT, RIGHT = [0.0, 0.0, 0.5, 1.0], [0.5, 0.0, 1.0, 1.0]
WHITE_BACKGROUND = {"color": "white", "rgb": [255, 255, 255]}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server for the module: the demo's verifiable rewards, the example plugin and a slow reward."""
    root = tmp_path_factory.mktemp("served")
    spec = root / "rewards.yaml"
    spec.write_text(SPEC)
    with reward_server(spec, root / "server.log", *LIMITS) as server:
        yield server


@pytest.fixture
def example_plugin(isolated_registry):
    """The example plugin importable by dotted path in this process too (forgotten afterwards)."""
    sys.path.insert(0, str(EXAMPLE_PLUGIN))
    yield
    sys.path.remove(str(EXAMPLE_PLUGIN))
    sys.modules.pop("simplear_rl_example_plugin", None)


def demo_batch() -> tuple[list[torch.Tensor], list[str], dict[str, list[Any]]]:
    """Demo pictures (one of another size), captions and the metadata the verifiable rewards read."""
    two_red = paint(paint(canvas(), slice(0, 16), slice(0, 16), RED), slice(40, 56), slice(8, 24), RED)
    stray_blue = paint(paint(canvas(), slice(16, 48), slice(40, 56), BLUE), slice(0, 8), slice(0, 8), BLUE)
    rows = [  # scores differ between rewards: partial colour, extra objects, a stray patch, nothing, right
        (paint(canvas(), slice(0, 16), slice(0, 16), RED), "a red square on the left", [demo_object(RED, LEFT, 0.25)]),
        (stray_blue, "a blue square on the right", [demo_object(BLUE, RIGHT, 0.25, color="blue", region="right")]),
        (canvas(), "a red square on the left", [demo_object(RED, LEFT, 0.25)]),
        (two_red, "a red square on the left", [demo_object(RED, LEFT, 0.25)]),
        (paint(canvas(size=32), slice(0, 16), slice(16, 32), RED), "a red square on the right",
         [demo_object(RED, RIGHT, 0.5)]),
    ]
    images, prompts, objects = (list(column) for column in zip(*rows))
    return images, prompts, {"objects": objects, "background": [WHITE_BACKGROUND] * len(rows)}


def remote_spec(url: str, name: str, **extra: Any) -> dict[str, Any]:
    return {"name": "remote", "as": name, "url": url, "rewards": [name], **extra}


def call(method: str, url: str, body: bytes | None = None) -> tuple[int, Any]:
    """``(status, decoded JSON)`` of one raw request, whatever the status."""
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def score_body(images, prompts, metadata=None, rewards=("color_region",)) -> bytes:
    payload = {"rewards": list(rewards), "prompts": prompts, "images": [to_base64_png(i) for i in images]}
    if metadata is not None:
        payload["metadata"] = metadata
    return json.dumps(payload).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ the API
def test_health_lists_the_served_rewards_with_their_columns_and_the_limits(served):
    status, health = call("GET", served.url + "/health")
    assert status == 200 and health["status"] == "ok"
    assert [r["name"] for r in health["rewards"]] == SERVED
    fields = {r["name"]: r["required_fields"] for r in health["rewards"]}
    assert fields == {"color_region": ["objects"], "object_count": ["objects"], "background": ["background", "objects"],
                      "example_palette": ["objects"], "gated_background": ["background", "objects"], "slow": []}
    assert {r["name"]: r["threshold"] for r in health["rewards"]}["color_region"] == 0.5
    assert (health["max_batch"], health["max_body_bytes"], health["max_pixels"]) == (8, 2**20, 10000)


def test_remote_scores_equal_local_scores_of_the_same_rewards(served, example_plugin):
    images, prompts, metadata = demo_batch()
    local = build_rewards(["color_region", "object_count", "background", {"name": PLUGIN, "min_fraction": 0.05},
                           {"name": "background", "as": "gated_background",
                            "gate": {"reward": "color_region", "threshold": 0.75}}])
    names = local.names
    assert names == SERVED[:5]
    remote = build_rewards([remote_spec(served.url, n, batch_size=2) for n in names])
    expected = local.score(images, prompts, **metadata)
    got = remote.score(images, prompts, **metadata)
    for name in names:
        assert torch.equal(got[name], expected[name]), name
    assert expected["color_region"].tolist() == [0.5, 1.0, 0.0, 1.0, 1.0]
    assert expected["object_count"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert expected["background"][1] < 1.0 and expected["example_palette"].tolist() == [1.0, 1.0, 0.0, 1.0, 1.0]
    # The gate is applied on the server, which scores the gating reward too when only the gated one is asked.
    assert expected["gated_background"].tolist() == [0.0, *expected["background"][1:2].tolist(), 0.0, 1.0, 1.0]
    # The remote entries carry what the suite checks at start-up and what accuracy reports use.
    assert remote.rewards["background"].required_fields == ("background", "objects")
    assert remote.rewards["color_region"].threshold == 0.5

    # Several served rewards in one entry (one request): their weighted sum.
    summed = build_rewards([{"name": "remote", "url": served.url, "rewards": {"color_region": 2.0, "background": -1.0}}])
    torch.testing.assert_close(
        summed.score(images, prompts, **metadata)["remote"], 2.0 * expected["color_region"] - expected["background"]
    )


def test_remote_build_fails_fast_naming_the_url_and_the_fix(served):
    with pytest.raises(RewardConfigError, match=r"does not serve \['clip'\]; it serves \['background', 'color_region'"):
        build_rewards([{"name": "remote", "url": served.url, "rewards": ["color_region", "clip"]}])
    with pytest.raises(RewardConfigError, match="batch_size 16 is above the 8 rows per request"):
        build_rewards([remote_spec(served.url, "color_region", batch_size=16)])
    with pytest.raises(RewardConfigError, match="rewards must name the served rewards"):
        build_rewards([{"name": "remote", "url": served.url, "rewards": []}])
    with pytest.raises(RewardConfigError, match="url must look like http://host:port"):
        build_rewards([remote_spec("127.0.0.1:8100", "color_region")])
    dead = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(RewardConfigError) as info:
        build_rewards([remote_spec(dead, "color_region", retries=1, timeout=2.0)])
    assert time.monotonic() - start < 2 * 2.0 + BACKOFF_S + 5.0
    message = str(info.value)
    assert f"the reward server at {dead} did not answer GET /health" in message
    assert "simplear-rl rewards serve --spec" in message


def test_bad_requests_get_a_4xx_with_a_message(served):
    images, prompts, metadata = demo_batch()
    score = served.url + "/score"
    one = (images[:1], prompts[:1], {"objects": metadata["objects"][:1]})
    cases = [
        (b"not json", 400, "the body is not JSON"),
        (json.dumps({"prompts": [], "imgs": []}).encode(), 400, "unknown key(s) ['imgs']"),
        (score_body(*one, rewards=["clip"]), 400, "does not serve ['clip']"),
        (score_body(images[:2], prompts[:1]), 400, "2 images for 1 prompts"),
        (json.dumps({"prompts": ["a"], "images": ["%%%"]}).encode(), 400, "image 0: not valid base64"),
        (json.dumps({"prompts": ["a"], "images": ["aGVsbG8="]}).encode(), 400, "image 0: not a readable PNG"),
        (score_body(images[:1], prompts[:1]), 400, "reward 'color_region' needs metadata column 'objects'"),
        (score_body(*one[:2], {"objects": []}), 400, "metadata column 'objects' must hold one value per row (1)"),
        (score_body([images[0]] * 9, [prompts[0]] * 9), 413, "9 rows is above this server's limit of 8"),
        (score_body([canvas(size=128)], ["big"], {"objects": [[]]}), 413, "128x128 is above the limit of 10000 pixels"),
        (json.dumps({"prompts": ["x" * 2**21], "images": []}).encode(), 413, f"server's limit of {2**20} bytes"),
    ]
    for body, status, message in cases:
        got_status, answer = call("POST", score, body)
        assert (got_status, message in answer["detail"]) == (status, True), (message, got_status, answer)
    broken = [{"color": "red", "rgb": [255, 0, 0]}]  # no `box`: the reward itself raises
    status, answer = call("POST", score, score_body(images[:1], ["a broken row"], {"objects": [broken]}))
    assert status == 422
    assert "reward 'color_region' raised on prompt 'a broken row' (row 0): KeyError" in answer["detail"]
    assert call("GET", score)[0] == 405
    status, answer = call("POST", score, score_body(*one))  # the server still serves after all that
    assert status == 200 and answer["scores"]["color_region"] == [0.5] and answer["rows"] == 1


def test_a_served_reward_that_raises_fails_or_drops_rows_like_a_local_one(served):
    images, prompts, metadata = demo_batch()
    metadata["objects"][1] = [{"color": "red", "rgb": [255, 0, 0]}]  # row 1 lacks `box`
    suite = build_rewards([remote_spec(served.url, "color_region")])
    with pytest.raises(RewardScoreError) as info:
        suite.score(images, prompts, **metadata)
    message = str(info.value)
    assert f"reward 'color_region' raised on prompt {prompts[1]!r} (row 1)" in message
    assert "answered HTTP 422" in message and "KeyError: 'box'" in message
    scores = suite.score(images, prompts, on_error="drop", **metadata)["color_region"]
    assert math.isnan(scores[1]) and not scores[[0, 2, 3, 4]].isnan().any()


# ------------------------------------------------------------------ failures of the server itself
def test_a_killed_server_fails_naming_the_url_or_drops_every_row(tmp_path):
    images, prompts, metadata = demo_batch()
    with reward_server("color_region", tmp_path / "server.log") as server:
        suite = build_rewards([remote_spec(server.url, "color_region", timeout=2.0, retries=1)])
        assert suite.score(images[:1], prompts[:1], objects=metadata["objects"][:1])["color_region"].tolist() == [0.5]
        server.process.kill()
        server.process.wait(timeout=10)
        start = time.monotonic()
        with pytest.raises(RewardScoreError) as info:
            suite.score(images, prompts, **metadata)
        assert f"reward server at {server.url}: cannot reach {server.url}/score" in str(info.value)
        assert all(math.isnan(v) for v in suite.score(images, prompts, on_error="drop", **metadata)["color_region"])
        (function,) = suite.trl_reward_funcs(on_error="drop")
        assert function(prompts, images=images, **metadata) == [None] * len(prompts)
        assert time.monotonic() - start < 2 * (2 * 2.0 + BACKOFF_S) + 5.0


def test_serve_refuses_bad_input_before_serving(tmp_path, capsys, monkeypatch):
    assert cli.main(["serve", "--spec", str(tmp_path / "missing.yaml")]) == 2
    assert "reward spec file" in capsys.readouterr().err
    assert cli.main(["serve", "--spec", "t_no_such_reward"]) == 2
    assert "unknown reward 't_no_such_reward'" in capsys.readouterr().err
    assert cli.main(["serve", "--spec", "color_region", "--max_batch", "0"]) == 2
    assert "--max_batch must be positive" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--spec", "color_region", "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if the serve extra were not installed
    assert cli.main(["serve", "--spec", "color_region"]) == 1
    assert 'pip install -e ".[serve]"' in capsys.readouterr().err


def test_the_server_stops_by_itself_when_idle_or_when_its_parent_exits(tmp_path):
    # Both start at once: one stops after a second without requests; the other is started by a parent
    # that waits until it listens, then exits without stopping it.
    orphan_log = tmp_path / "orphan.log"
    parent = (
        "import subprocess, sys, pathlib; from reward_server_helpers import wait_for_url;"
        f"log = pathlib.Path({str(orphan_log)!r}); p = subprocess.Popen({server_command('color_region')!r},"
        " stdout=open(log, 'w'), stderr=subprocess.STDOUT); wait_for_url(p, log); print(p.pid)"
    )
    launcher = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True, env=server_env(),
                                cwd=REPO)
    try:
        with reward_server("color_region", tmp_path / "idle.log", "--idle_timeout", "1") as server:
            assert server.process.wait(timeout=60) == 0
            assert "stopped: no request for 1 s (--idle_timeout)" in server.output()
        out, _ = launcher.communicate(timeout=120)
    finally:
        stop(launcher)
    assert launcher.returncode == 0, orphan_log.read_text()
    orphan = int(out.split()[-1])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and running(orphan):
        time.sleep(0.2)
    assert not running(orphan), f"reward server {orphan} still runs after its parent exited"
    assert "stopped: the process that started it exited (--exit_with_parent)" in orphan_log.read_text()


def running(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie waiting for a reaper that is not ours does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rpartition(") ")[2].startswith("Z"))


# Last: the slow reward keeps the server busy for a few seconds after the client gave up.
def test_a_slow_server_hits_the_timeout_instead_of_hanging(served):
    images, prompts, _ = demo_batch()
    timeout, retries = 0.5, 1
    suite = build_rewards([remote_spec(served.url, "slow", timeout=timeout, retries=retries)])
    bound = timeout * (retries + 1) + BACKOFF_S + 3.0
    start = time.monotonic()
    scores = suite.score(images, prompts, on_error="drop")["slow"]
    assert time.monotonic() - start < bound
    assert scores.isnan().all()
    start = time.monotonic()
    with pytest.raises(RewardScoreError) as info:
        suite.score(images, prompts)
    assert time.monotonic() - start < bound
    assert f"{served.url}/score timed out after 0.5 s" in str(info.value)
