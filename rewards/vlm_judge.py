"""``vlm_judge``: a vision-language model asked a yes/no question about each image.

The model runs behind an OpenAI-compatible chat-completions endpoint (``vllm serve``, SGLang,
or any server that accepts ``image_url`` content parts), e.g.::

    vllm serve /models/Qwen2.5-VL-7B-Instruct --port 8000 --max-logprobs 20
    - {name: vlm_judge, url: http://127.0.0.1:8000/v1, model: /models/Qwen2.5-VL-7B-Instruct}

Per image one request: the picture as a ``data:image/png;base64,...`` URL and the question
``template`` with ``{prompt}`` replaced by the caption, at temperature 0. The score:

- with log-probabilities (``top_logprobs > 0`` and the server returns them):
  ``P(yes) / (P(yes) + P(no))`` over the top candidates of the first generated token that is not
  blank, every spelling counted (``Yes``, `` yes``, ``YES``...);
- otherwise (no log-probs, or neither word among the candidates): 1.0 for an answer whose first
  word is yes, 0.0 for no, and ``unclear_score`` for anything else (default 0.5; ``null`` makes it
  NaN, so the recipe's ``reward_on_error`` decides: ``fail`` stops, ``drop`` skips the row).
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from .base import Reward
from .errors import RewardConfigError, RewardScoreError
from .http_client import ServiceError, reward_service
from .png import to_base64_png
from .registry import register_reward

DEFAULT_TEMPLATE = "Does this image show: {prompt}? Answer yes or no."
_ANSWER = re.compile(r"[\W_]*(yes|no)\b", re.IGNORECASE)
# Byte-level BPE and SentencePiece vocabularies mark a leading space with these.
_TOKEN_NOISE = re.compile(r"[\W_\u0120\u2581]+")


def token_word(token: str) -> str:
    """A candidate token as a bare lower-case word (``' Yes'``, ``'YES.'``, ``'Ġyes'`` -> ``'yes'``)."""
    return _TOKEN_NOISE.sub("", token).lower()


def yes_probability(candidates: list[dict[str, Any]]) -> float | None:
    """``P(yes) / (P(yes) + P(no))`` from one position's top log-probs; None if neither word is there."""
    mass = {"yes": 0.0, "no": 0.0}
    for candidate in candidates:
        word = token_word(str(candidate.get("token", "")))
        if word in mass:
            mass[word] += math.exp(float(candidate["logprob"]))
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def answer_score(text: str | None, unclear_score: float | None) -> float:
    """1.0 for an answer whose first word is yes, 0.0 for no, ``unclear_score`` (NaN if None) otherwise."""
    match = _ANSWER.match(text or "")
    if match:
        return 1.0 if match.group(1).lower() == "yes" else 0.0
    return math.nan if unclear_score is None else float(unclear_score)


@register_reward("vlm_judge", threshold=0.5)
class VLMJudgeReward(Reward):
    """A vision-language model's yes/no verdict on "does this image show the prompt?" (OpenAI-compatible API).

    Parameters: ``url`` (the API base, e.g. ``http://127.0.0.1:8000/v1``), ``model`` (the served model
    name), ``template`` (the question; ``{prompt}`` is replaced by the caption), ``api_key_env``
    (name of an environment variable holding the API key; none sent if unset), ``timeout`` (seconds
    per attempt), ``retries``, ``max_tokens`` (answer length), ``top_logprobs`` (candidates asked for
    the P(yes) score; 0 asks for none and scores the text), ``unclear_score`` (score of an answer
    that is neither yes nor no; null: NaN), ``batch_size`` (rows per call, sent concurrently).
    """

    default_batch_size = 8

    def __init__(
        self,
        url: str,
        model: str,
        template: str = DEFAULT_TEMPLATE,
        api_key_env: str | None = None,
        timeout: float = 60.0,
        retries: int = 2,
        max_tokens: int = 4,
        top_logprobs: int = 20,
        unclear_score: float | None = 0.5,
        batch_size: int | None = None,
    ):
        super().__init__(batch_size=batch_size)
        self.service = reward_service("vlm_judge", url, timeout, retries)
        self.url = self.service.base_url
        checks = [
            (isinstance(model, str) and model, f"model must be the served model's name, got {model!r}"),
            (isinstance(template, str) and template.strip(), f"template must be a question, got {template!r}"),
            (isinstance(max_tokens, int) and max_tokens >= 1, f"max_tokens must be an integer >= 1, got {max_tokens!r}"),
            (isinstance(top_logprobs, int) and top_logprobs >= 0,
             f"top_logprobs must be an integer >= 0, got {top_logprobs!r}"),
            (unclear_score is None or isinstance(unclear_score, (int, float)) and math.isfinite(unclear_score),
             f"unclear_score must be a number or null, got {unclear_score!r}"),
        ]
        for ok, problem in checks:
            if not ok:
                raise RewardConfigError(f"reward 'vlm_judge': {problem}")
        self.model, self.template = model, template
        self.max_tokens, self.top_logprobs, self.unclear_score = max_tokens, top_logprobs, unclear_score
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise RewardConfigError(
                    f"reward 'vlm_judge': api_key_env names the environment variable {api_key_env!r}, which is not set; "
                    "export it with the API key, or remove api_key_env for a server without a key"
                )
            self.service.headers["Authorization"] = f"Bearer {key}"
        self._check_model()

    def _check_model(self) -> None:
        """``GET /models`` must answer and list ``model``: a wrong URL or name fails before training."""
        try:
            listed = [entry["id"] for entry in self.service.get("/models")["data"]]
        except ServiceError as err:
            raise RewardConfigError(
                f"reward 'vlm_judge': the model server at {self.url} did not answer GET /models: {err}. Start it "
                "(e.g. `vllm serve <model> --port 8000`) or fix `url:` (the API base, ending in /v1)."
            ) from None
        except (KeyError, TypeError) as exc:
            raise RewardConfigError(
                f"reward 'vlm_judge': {self.url}/models is not an OpenAI-compatible model list ({exc!r}); "
                "`url:` must be the API base, e.g. http://127.0.0.1:8000/v1"
            ) from None
        if self.model not in listed:
            raise RewardConfigError(f"reward 'vlm_judge': the server at {self.url} serves {listed}, not {self.model!r}")

    def request(self, image: torch.Tensor, prompt: str) -> dict[str, Any]:
        """The chat-completions body that asks about one image."""
        content = [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + to_base64_png(image)}},
            {"type": "text", "text": self.template.replace("{prompt}", prompt)},
        ]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_tokens,
            "temperature": 0.0,
        }
        if self.top_logprobs:
            body.update(logprobs=True, top_logprobs=self.top_logprobs)
        return body

    def judge(self, image: torch.Tensor, prompt: str) -> float:
        """The score of one image (see the module docstring)."""
        try:
            answer = self.service.post("/chat/completions", self.request(image, prompt))
        except ServiceError as err:
            raise RewardScoreError(f"VLM judge at {self.url}: {err}") from None
        try:
            choice = answer["choices"][0]
            text = choice["message"].get("content")
            positions = (choice.get("logprobs") or {}).get("content") or []
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise RewardScoreError(f"VLM judge at {self.url} answered without a chat completion ({exc!r})") from None
        for position in positions:
            if str(position.get("token", "")).strip():
                probability = yes_probability(position.get("top_logprobs") or [])
                if probability is not None:
                    return probability
                break
        return answer_score(text, self.unclear_score)

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            scores = list(pool.map(self.judge, images, prompts))
        return torch.tensor(scores, dtype=torch.float32)
