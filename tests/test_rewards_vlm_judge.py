"""The ``vlm_judge`` reward against a stand-in for ``vllm serve``.

``FakeVLM`` below is a small OpenAI-compatible server (FastAPI + uvicorn on 127.0.0.1, in a thread
of the test process) standing in for vLLM / SGLang: ``GET /v1/models`` and
``POST /v1/chat/completions``. It decodes the picture it is sent and answers from its red pixels, so
the expected scores are known exactly: log-probs path, text-only path, server errors, retries,
timeouts and a stopped server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import math
import socket
import threading
import time

import numpy as np
import pytest
import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from PIL import Image
from rewards_helpers import BLUE, RED, canvas, paint

from rewards import RewardConfigError, RewardScoreError, build_rewards
from rewards.http_client import BACKOFF_S
from rewards.vlm_judge import DEFAULT_TEMPLATE, token_word

MODEL = "fake-vlm"
#: P(no) of every answer; P(yes) = 0.2 + 0.6 x (fraction of red pixels), split over two spellings.
P_NO = 0.1


def red_fraction(pixels: np.ndarray) -> float:
    """Fraction of pure-red pixels of an ``[H,W,3]`` uint8 picture."""
    return float(((pixels[..., 0] > 200) & (pixels[..., 1] < 50) & (pixels[..., 2] < 50)).mean())


def expected_p_yes(image: torch.Tensor) -> float:
    p_yes = 0.2 + 0.6 * red_fraction((image.permute(1, 2, 0) * 255).round().byte().numpy())
    return p_yes / (p_yes + P_NO)


class FakeVLM:
    """An OpenAI-compatible chat server that judges "is it red?"; the caption can ask for misbehaviour.

    ``mode``: ``"logprobs"`` (answers with top log-probs, P(yes) from the red pixels) or ``"text"``
    (no log-probs: "Yes, it does." when at least 10% of pixels are red, else "No."). A question
    containing ``unclear`` gets "I cannot tell" (and candidates that are neither yes nor no),
    ``newline`` a blank first token, ``slow`` an answer after 5 s, ``reject`` an HTTP 400;
    ``fail_next`` answers HTTP 500 that many times first.
    """

    def __init__(self):
        self.mode = "logprobs"
        self.fail_next = 0
        self.requests: list[dict] = []
        self.url = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [{"id": MODEL, "object": "model"}]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            self.requests.append({"auth": request.headers.get("authorization"), "body": body})
            image_part, text_part = body["messages"][0]["content"]
            question = text_part["text"]
            if self.fail_next:
                self.fail_next -= 1
                return JSONResponse({"error": {"message": "the engine is restarting"}}, status_code=500)
            if "reject" in question:
                return JSONResponse({"error": {"message": "logprobs are not supported"}}, status_code=400)
            if "slow" in question:
                await asyncio.sleep(5)
            data = base64.b64decode(image_part["image_url"]["url"].removeprefix("data:image/png;base64,"))
            red = red_fraction(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
            return self.completion(question, red, with_logprobs=self.mode == "logprobs" and body.get("logprobs"))

        return app

    def completion(self, question: str, red: float, with_logprobs: bool) -> dict:
        if "unclear" in question:
            text, top = "I cannot tell", [("I", 0.6), ("Maybe", 0.3)]
        else:
            p_yes = 0.2 + 0.6 * red
            text = "Yes, it does." if red >= 0.1 else "No."
            top = [("Yes", 0.75 * p_yes), (" yes", 0.25 * p_yes), ("No", P_NO), ("Maybe", 0.05)]
        candidates = [{"token": token, "logprob": math.log(p)} for token, p in top]
        positions = [{**candidates[0], "top_logprobs": candidates}]
        if "newline" in question:
            positions.insert(0, {"token": "\n", "logprob": -0.01, "top_logprobs": [{"token": "\n", "logprob": -0.01}]})
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        choice["logprobs"] = {"content": positions} if with_logprobs else None
        return {"id": "fake", "object": "chat.completion", "model": MODEL, "choices": [choice]}


@contextlib.contextmanager
def serve_in_thread(app: FastAPI):
    """Serve ``app`` on a free loopback port in a thread; yields ``(base URL, stop)``."""
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()

    def stop():
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()

    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", stop
    finally:
        stop()


@pytest.fixture
def fake_vlm():
    fake = FakeVLM()
    with serve_in_thread(fake.app()) as (url, stop):
        fake.url, fake.stop = url + "/v1", stop
        yield fake


def judge(fake: FakeVLM, **params) -> dict:
    return {"name": "vlm_judge", "url": fake.url, "model": MODEL, **params}


def pictures() -> list[torch.Tensor]:
    return [
        paint(canvas(), slice(0, 32), slice(0, 64), RED),  # half red
        paint(canvas(), slice(0, 64), slice(0, 64), RED),  # all red
        paint(canvas(), slice(0, 32), slice(0, 32), BLUE),  # no red
        paint(canvas(size=32), slice(0, 8), slice(0, 32), RED),  # a quarter red, another size
    ]


def test_logprobs_score_is_p_yes_over_p_yes_plus_p_no_of_the_first_answer_token(fake_vlm, monkeypatch):
    monkeypatch.setenv("T_FAKE_VLM_KEY", "secret")
    suite = build_rewards([judge(fake_vlm, api_key_env="T_FAKE_VLM_KEY", batch_size=2)])
    images = pictures()
    prompts = ["a red band", "all red", "a blue square", "a red band after a newline"]
    scores = suite.score(images, prompts)["vlm_judge"]
    expected = torch.tensor([expected_p_yes(image) for image in images])
    torch.testing.assert_close(scores, expected, rtol=1e-6, atol=0)
    assert expected[1] == pytest.approx(0.8 / 0.9) and expected[2] == pytest.approx(0.2 / 0.3)

    assert len(fake_vlm.requests) == 4
    by_question = {r["body"]["messages"][0]["content"][1]["text"]: r for r in fake_vlm.requests}
    assert set(by_question) == {DEFAULT_TEMPLATE.replace("{prompt}", p) for p in prompts}
    for request in fake_vlm.requests:
        body = request["body"]
        assert request["auth"] == "Bearer secret"
        assert (body["model"], body["temperature"], body["logprobs"], body["top_logprobs"], body["max_tokens"]) == (
            MODEL, 0.0, True, 20, 4)
        assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert [token_word(t) for t in (" Yes", "YES.", "\u0120yes", "\u2581No", "no!")] == ["yes", "yes", "yes", "no", "no"]


def test_text_answers_score_yes_one_no_zero_and_the_rest_as_configured(fake_vlm):
    images = pictures()[:3]
    prompts = ["a red band", "all red", "a blue square"]
    fake_vlm.mode = "text"  # a server that returns no log-probs
    suite = build_rewards([judge(fake_vlm, template="Is there {prompt} in the picture?")])
    assert suite.score(images, prompts)["vlm_judge"].tolist() == [1.0, 1.0, 0.0]
    # The rows are asked concurrently, so the server sees them in any order: compare the set of questions.
    asked = sorted(r["body"]["messages"][0]["content"][1]["text"] for r in fake_vlm.requests)
    assert asked == sorted(f"Is there {p} in the picture?" for p in prompts)

    fake_vlm.requests.clear()
    no_logprobs = build_rewards([judge(fake_vlm, top_logprobs=0)])
    assert no_logprobs.score(images[:1], ["unclear"])["vlm_judge"].tolist() == [0.5]
    assert "logprobs" not in fake_vlm.requests[0]["body"] and fake_vlm.requests[0]["auth"] is None

    # With log-probs whose candidates hold neither word, the text decides too.
    fake_vlm.mode = "logprobs"
    strict = build_rewards([judge(fake_vlm, unclear_score=None)])
    scores = strict.score(images, ["a red band", "unclear", "a blue square"], on_error="drop")["vlm_judge"]
    assert math.isnan(scores[1]) and scores[0] == pytest.approx(expected_p_yes(images[0]))
    with pytest.raises(RewardScoreError, match=r"reward 'vlm_judge' returned nan for prompt 'unclear' \(row 1\)"):
        strict.score(images, ["a red band", "unclear", "a blue square"])


def test_a_wrong_url_model_or_key_fails_at_build_naming_it(fake_vlm):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    with pytest.raises(RewardConfigError, match=f"the model server at {dead} did not answer GET /models"):
        build_rewards([{"name": "vlm_judge", "url": dead, "model": MODEL, "retries": 0}])
    with pytest.raises(RewardConfigError, match=r"serves \['fake-vlm'\], not 'other-model'"):
        build_rewards([judge(fake_vlm, model="other-model")])
    with pytest.raises(RewardConfigError, match="'T_UNSET_VLM_KEY', which is not set"):
        build_rewards([judge(fake_vlm, api_key_env="T_UNSET_VLM_KEY")])
    with pytest.raises(RewardConfigError, match="url must look like http://host:port"):
        build_rewards([judge(fake_vlm, url="127.0.0.1:8000/v1")])
    with pytest.raises(RewardConfigError, match="top_logprobs must be an integer >= 0"):
        build_rewards([judge(fake_vlm, top_logprobs=-1)])


def test_server_errors_are_retried_or_reported_and_a_slow_or_stopped_server_never_hangs(fake_vlm):
    image = pictures()[:1]
    fake_vlm.fail_next = 1  # one HTTP 500, then an answer
    suite = build_rewards([judge(fake_vlm, retries=1)])
    assert suite.score(image, ["a red band"])["vlm_judge"].item() == pytest.approx(expected_p_yes(image[0]))
    assert len(fake_vlm.requests) == 2

    fake_vlm.requests.clear()  # a 4xx is the server refusing: reported with its message, not retried
    with pytest.raises(RewardScoreError, match="answered HTTP 400: logprobs are not supported"):
        suite.score(image, ["reject"])
    assert len(fake_vlm.requests) == 2  # the batch, then the row alone (the suite looking for the culprit)

    timeout, retries = 0.5, 1
    slow = build_rewards([judge(fake_vlm, timeout=timeout, retries=retries)])
    start = time.monotonic()
    assert slow.score(image * 3, ["slow"] * 3, on_error="drop")["vlm_judge"].isnan().all()
    assert time.monotonic() - start < timeout * (retries + 1) + BACKOFF_S + 3.0
    with pytest.raises(RewardScoreError, match=f"VLM judge at {fake_vlm.url}: .*timed out after 0.5 s"):
        slow.score(image, ["slow"])

    fake_vlm.stop()
    start = time.monotonic()
    with pytest.raises(RewardScoreError, match=f"cannot reach {fake_vlm.url}/chat/completions"):
        suite.score(image, ["a red band"])
    assert suite.score(image * 2, ["a red band"] * 2, on_error="drop")["vlm_judge"].isnan().all()
    assert time.monotonic() - start < 10.0  # refused at once; not the 60 s timeout
