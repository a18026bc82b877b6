"""A reward server that lets no one in without its token, over TLS when asked, and refuses work past capacity.

Every server here listens on 127.0.0.1; the refusal to expose a non-loopback address is checked on
192.0.2.1 (TEST-NET-1, never this machine's), which the server refuses before opening any socket.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from reward_server_helpers import reward_server, scored_ids, self_signed_certificate, tagged_images

from rewards import RewardConfigError, RewardScoreError, build_rewards, cli
from rewards.png import to_base64_png
from rewards.server import exposure_warnings

TOKEN = "s3cret-token-0123456789-abcdef"
TOKEN_ENV = "T_REWARD_TOKEN_FOR_TESTS"


def id_spec(folder: Path, seconds: float = 0.0) -> tuple[Path, Path]:
    """A spec serving ``image_id`` (which logs every id it scores) and the path of that log."""
    log = folder / "scored.txt"
    spec = folder / "rewards.yaml"
    spec.write_text(f'rewards:\n  - {{name: "reward_server_helpers:image_id", as: image_id, log: "{log}", '
                    f"seconds: {seconds}}}\n")
    return spec, log


def token_file(folder: Path, token: str = TOKEN) -> Path:
    path = folder / "reward.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return path


def short_token_file(folder: Path) -> Path:
    path = folder / "short.token"
    path.write_text("q7Zx!\n")
    return path


def call(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None):
    """``(status, raw body, headers)`` of one request, whatever the status."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers


def id_body(ids: list[int]) -> bytes:
    images = tagged_images(ids)
    return json.dumps({"prompts": [f"row {i}" for i in ids], "images": [to_base64_png(im) for im in images]}).encode()


def remote(url: str, **extra: Any):
    return build_rewards([{"name": "remote", "as": "image_id", "url": url, "rewards": ["image_id"], **extra}])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    """One server on 127.0.0.1 that wants TOKEN (read from a file)."""
    root = tmp_path_factory.mktemp("guarded")
    spec, log = id_spec(root)
    secret = token_file(root)
    with reward_server(spec, root / "server.log", "--token_file", str(secret)) as server:
        server.scored_log, server.root = log, root
        yield server


# ------------------------------------------------------------------ authentication
def test_score_without_the_right_token_is_a_one_line_401_that_scores_nothing(guarded):
    refused = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789-abcdef"},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ]
    big = json.dumps({"prompts": ["x" * 2**20], "images": []}).encode()  # drained, never read as JSON
    for headers in refused:
        for body in (id_body([1, 2]), big):
            status, raw, answer_headers = call("POST", guarded.url + "/score", body, headers)
            assert status == 401, (headers, raw)
            assert raw.count(b"\n") == 0 and "missing or wrong bearer token" in json.loads(raw)["detail"]
            assert TOKEN.encode() not in raw and answer_headers["WWW-Authenticate"] == "Bearer"
        assert call("GET", guarded.url + "/auth", None, headers)[0] == 401
    assert scored_ids(guarded.scored_log) == []  # no refused request reached the reward

    good = {"Authorization": f"Bearer {TOKEN}"}
    status, raw, _ = call("POST", guarded.url + "/score", id_body([7, 300]), good)
    assert status == 200 and json.loads(raw)["scores"]["image_id"] == [7.0, 300.0]
    assert call("POST", guarded.url + "/score", id_body([5]), {"Authorization": f"bearer  {TOKEN}"})[0] == 200
    assert scored_ids(guarded.scored_log) == [7, 300, 5]
    assert call("GET", guarded.url + "/auth", None, good)[0] == 200


def test_health_stays_open_and_shows_no_token_or_path(guarded):
    status, raw, _ = call("GET", guarded.url + "/health")
    assert status == 200
    health = json.loads(raw)
    assert health["auth"] == "bearer" and [r["name"] for r in health["rewards"]] == ["image_id"]
    text = raw.decode()
    assert TOKEN not in text and str(guarded.root) not in text and "token" not in text.replace("auth", "")
    assert TOKEN not in guarded.output()  # nor does the server print it


def test_remote_reward_sends_the_token_from_env_or_file_and_never_shows_it(guarded, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for source in ({"token_env": TOKEN_ENV}, {"token_file": str(token_file(tmp_path))}):
        scores = remote(guarded.url, **source).score(tagged_images([11, 12]), ["a", "b"])
        assert scores["image_id"].tolist() == [11.0, 12.0], source

    wrong = "not-the-token-0123456789-abcdef"
    monkeypatch.setenv(TOKEN_ENV, wrong)
    failures = []
    for spec, expected in [
        ({}, "requires a token; set `token_env:`"),
        ({"token_env": TOKEN_ENV}, "answered HTTP 401: missing or wrong bearer token"),
        ({"token_env": "T_UNSET_VARIABLE"}, "environment variable T_UNSET_VARIABLE that should hold the token is not set"),
        ({"token_file": str(tmp_path / "missing.token")}, "cannot read the token file"),
        ({"token_file": str(short_token_file(tmp_path))}, "holds a token of 5 characters; use at least 16"),
        ({"token_env": TOKEN_ENV, "token_file": str(tmp_path / "x")}, "either in a file or in an environment variable"),
    ]:
        with pytest.raises(RewardConfigError) as info:
            remote(guarded.url, **spec)
        assert expected in str(info.value), (spec, str(info.value))
        failures.append(str(info.value))
    assert not any(TOKEN in f or wrong in f for f in failures)


def test_a_token_refused_while_scoring_is_a_reward_error_without_the_token(guarded, monkeypatch, tmp_path):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    suite = remote(guarded.url, token_env=TOKEN_ENV, retries=0)
    suite.rewards["image_id"].service.headers["Authorization"] = "Bearer rotated-token-0123456789"  # server changed key
    with pytest.raises(RewardScoreError) as info:
        suite.score(tagged_images([1]), ["a"])
    assert "answered HTTP 401" in str(info.value) and guarded.url in str(info.value)
    assert TOKEN not in str(info.value) and "rotated-token" not in str(info.value)


# ------------------------------------------------------------------ what the command refuses
def test_serve_refuses_a_non_loopback_host_without_a_token_unless_insecure(tmp_path, capsys, monkeypatch):
    host = "192.0.2.1"  # TEST-NET-1: not an address of this machine, so nothing can listen there
    assert cli.main(["serve", "--spec", "color_region", "--host", host, "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("simplear-rl rewards: error: --host 192.0.2.1 is reachable")
    assert "--token_file FILE or --token_env VAR" in err and "--insecure true" in err
    # Explicitly insecure (or with a token), it goes on to listen, which this address refuses.
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    for extra in (["--insecure", "true"], ["--insecure"], ["--token_env", TOKEN_ENV]):
        assert cli.main(["serve", "--spec", "color_region", "--host", host, "--port", "0", *extra]) == 2
        assert f"cannot listen on {host}:0" in capsys.readouterr().err, extra
    shared = token_file(tmp_path)
    shared.chmod(0o644)
    assert cli.main(["serve", "--spec", "color_region", "--host", host, "--port", "0", "--token_file", str(shared)]) == 2
    err = capsys.readouterr().err
    assert f"warning: other users can read the token file {shared}; chmod 600 {shared}" in err
    assert TOKEN not in err
    short = short_token_file(tmp_path)
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    cases = [
        (["--insecure", "maybe"], "argument --insecure: expected true or false, got 'maybe'"),
        (["--token_file", str(short)], f"the token file {short} holds a token of 5 characters"),
        (["--token_file", str(tmp_path / "none")], "cannot read the token file"),
        (["--token_env", "T_UNSET_VARIABLE"], "environment variable T_UNSET_VARIABLE that should hold the token"),
        (["--ssl_keyfile", str(cert)], "--ssl_keyfile needs --ssl_certfile"),
        (["--ssl_certfile", str(cert)], f"cannot load the TLS certificate --ssl_certfile {cert}"),
        (["--max_concurrent", "0"], "--max_concurrent must be positive"),
    ]
    for extra, message in cases:
        assert cli.main(["serve", "--spec", "color_region", "--port", "0", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (extra, err)
        assert "q7Zx" not in err


def test_a_reachable_server_warns_when_it_has_no_token_or_sends_it_in_clear_text():
    assert exposure_warnings("127.0.0.1", has_token=False, tls=False) == []
    assert exposure_warnings("localhost", has_token=True, tls=False) == []
    (no_token,) = exposure_warnings("0.0.0.0", has_token=False, tls=True)
    assert "has no authentication (--insecure true)" in no_token
    (clear,) = exposure_warnings("10.1.2.3", has_token=True, tls=False)
    assert "the token travels unencrypted; serve HTTPS with --ssl_certfile/--ssl_keyfile" in clear
    assert exposure_warnings("::", has_token=True, tls=True) == []


# ------------------------------------------------------------------ TLS
@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_with_a_self_signed_certificate_the_client_verifies(tmp_path, monkeypatch):
    cert, key = self_signed_certificate(tmp_path)
    spec, log = id_spec(tmp_path)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with reward_server(spec, tmp_path / "server.log", "--ssl_certfile", str(cert), "--ssl_keyfile", str(key),
                       "--token_env", TOKEN_ENV, env={TOKEN_ENV: TOKEN}) as server:
        assert server.url.startswith("https://127.0.0.1:")
        suite = remote(server.url, token_env=TOKEN_ENV, ca_bundle=str(cert))
        assert suite.score(tagged_images([40, 41]), ["a", "b"])["image_id"].tolist() == [40.0, 41.0]
        # Not trusted by the system's authorities: refused at once, not retried, saying how to trust it.
        start = time.monotonic()
        with pytest.raises(RewardConfigError, match=r"certificate of .* does not verify .*as `ca_bundle:`"):
            remote(server.url, token_env=TOKEN_ENV, retries=5)
        assert time.monotonic() - start < 5.0
        with pytest.raises(RewardConfigError, match="ca_bundle is for an https:// url"):
            remote(server.url.replace("https", "http"), token_env=TOKEN_ENV, ca_bundle=str(cert))
        with pytest.raises(RewardConfigError, match="did not answer GET /health"):  # plain HTTP to a TLS port
            remote(server.url.replace("https", "http"), token_env=TOKEN_ENV, retries=0, timeout=5)
        assert TOKEN not in server.output()
    assert scored_ids(log) == [40, 41]


# ------------------------------------------------------------------ capacity
def test_over_capacity_is_a_503_with_retry_after_that_the_remote_reward_waits_out(tmp_path):
    spec, log = id_spec(tmp_path, seconds=3.0)
    with reward_server(spec, tmp_path / "server.log", "--max_concurrent", "1") as server:
        results: dict[str, Any] = {}

        def occupy(key: str, ids: list[int]) -> None:
            results[key] = call("POST", server.url + "/score", id_body(ids))[0]

        def wait_admitted() -> None:
            deadline = time.monotonic() + 30
            while json.loads(call("GET", server.url + "/health")[1])["admitted"] < 1:
                assert time.monotonic() < deadline, "the first request was never admitted"
                time.sleep(0.05)

        busy = threading.Thread(target=occupy, args=("first", [1]))
        busy.start()
        wait_admitted()
        status, raw, headers = call("POST", server.url + "/score", id_body([2]))
        assert status == 503 and raw.count(b"\n") == 0
        assert "at its capacity of 1 requests at once (--max_concurrent)" in json.loads(raw)["detail"]
        assert int(headers["Retry-After"]) >= 1
        # Without retries the reward fails naming the capacity; with them it waits and is scored once.
        with pytest.raises(RewardScoreError, match=r"answered HTTP 503: .*--max_concurrent"):
            remote(server.url, retries=0).score(tagged_images([3]), ["c"])
        patient = remote(server.url, retries=4, timeout=10)
        busy.join()
        busy = threading.Thread(target=occupy, args=("second", [4]))
        busy.start()
        wait_admitted()
        assert patient.score(tagged_images([5]), ["e"])["image_id"].tolist() == [5.0]
        busy.join()
    assert results == {"first": 200, "second": 200}
    assert scored_ids(log) == [1, 4, 5]  # refused requests were never scored
