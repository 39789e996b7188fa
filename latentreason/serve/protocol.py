"""OpenAI's request bodies, checked strictly, and its error format.

Every field is checked for its JSON type and range before anything reaches the model; an unknown field, a
wrong type or a value out of range is a `RequestError` (HTTP 400) naming the field, in OpenAI's error format.
Nothing in a request names a file or a model to load: `model` must be the id this server serves.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

MAX_STOPS = 4  # OpenAI's limit on `stop`


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI's error fields."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.kind = message, param, status, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": None}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for (set by `latentreason serve` flags)."""

    max_prompt_tokens: int = 4096
    max_tokens: int = 1024  # per choice
    default_max_tokens: int = 256
    max_n: int = 8
    max_body_bytes: int = 1 << 20


@dataclass
class LatentOptions:
    """The `latent` extra body field: how the reply reasons."""

    decoder: str | None = None  # a pretrained model's training-free decoder (default: the server's)
    decoder_args: dict = field(default_factory=dict)
    max_latents: int | None = None  # a latent model's thoughts at most (default: the model's)


@dataclass
class Ask:
    """A checked request: what to generate and how (the prompt still as the client sent it)."""

    chat: bool
    model: str
    messages: list[dict] | None  # chat: [{"role", "content"}]
    prompt: str | None  # completions
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    stream: bool = False
    include_usage: bool = False
    latent: LatentOptions = field(default_factory=LatentOptions)


COMMON = {"model", "temperature", "top_p", "max_tokens", "n", "stop", "seed", "stream", "stream_options", "user"}
CHAT_FIELDS = COMMON | {"messages", "max_completion_tokens", "latent"}
COMPLETION_FIELDS = COMMON | {"prompt", "latent"}
ROLES = ("system", "user", "assistant")


def parse_body(raw: bytes) -> dict:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RequestError(f"the body is not valid JSON: {err}") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def parse_ask(body: dict, chat: bool, limits: Limits) -> Ask:
    """The checked request of a /v1/chat/completions (`chat`) or /v1/completions body."""
    allowed = CHAT_FIELDS if chat else COMPLETION_FIELDS
    for name in body:
        if name not in allowed:
            raise RequestError(f"unknown field '{name}' (this server accepts: {', '.join(sorted(allowed))})", name)
    model = _typed(body, "model", str, required=True)
    messages = _messages(body) if chat else None
    prompt = None if chat else _typed(body, "prompt", str, required=True)
    if prompt is not None and not prompt:
        raise RequestError("prompt: expected a non-empty string", "prompt")
    max_tokens = _max_tokens(body, limits)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise RequestError("top_p: expected a number in (0, 1]", "top_p")
    n = _integer(body, "n", 1, 1, limits.max_n)
    seed = _typed(body, "seed", int)
    stream = _typed(body, "stream", bool) or False
    options = _typed(body, "stream_options", dict) or {}
    if set(options) - {"include_usage"} or not isinstance(options.get("include_usage", False), bool):
        raise RequestError('stream_options: expected {"include_usage": true|false}', "stream_options")
    _typed(body, "user", str)
    return Ask(
        chat=chat,
        model=model,
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        n=n,
        stop=_stops(body),
        seed=seed,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        latent=_latent(body),
    )


def _typed(body: dict, name: str, kind: type, required: bool = False, within: str = ""):
    """body[name] if it is a `kind` (None when absent); `within` prefixes the field's name in errors."""
    value, where = body.get(name), within + name
    if value is None:
        if required:
            raise RequestError(f"{where}: required", where)
        return None
    # JSON true/false are not numbers here, and an integer field takes no 3.0
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise RequestError(f"{where}: expected {_JSON_NAMES.get(kind, kind.__name__)}, got {json.dumps(value)}", where)
    return value


_JSON_NAMES = {str: "a string", int: "an integer", bool: "true or false", dict: "an object", list: "an array"}


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RequestError(f"{name}: expected a number, got {json.dumps(value)}", name)
    if not low <= value <= high:
        raise RequestError(f"{name}: expected a number in [{low:g}, {high:g}], got {value}", name)
    return float(value)


def _integer(body: dict, name: str, default: int, low: int, high: int) -> int:
    value = _typed(body, name, int)
    if value is None:
        return default
    if not low <= value <= high:
        raise RequestError(f"{name}: expected an integer in [{low}, {high}], got {value}", name)
    return value


def _max_tokens(body: dict, limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise RequestError("give max_tokens or max_completion_tokens, not both", "max_completion_tokens")
    return _integer(body, name, limits.default_max_tokens, 1, limits.max_tokens)


def _messages(body: dict) -> list[dict]:
    messages = _typed(body, "messages", list, required=True)
    if not messages:
        raise RequestError("messages: expected at least one message", "messages")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"}:
            raise RequestError(f"{where}: expected an object with role and content", where)
        if message.get("role") not in ROLES:
            raise RequestError(f"{where}.role: expected one of {', '.join(ROLES)}", f"{where}.role")
        if not isinstance(message.get("content"), str):
            raise RequestError(f"{where}.content: expected a string (text only)", f"{where}.content")
    if messages[-1]["role"] != "user":
        raise RequestError("messages: the last message must be the user's", "messages")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops) or len(stops) > MAX_STOPS:
        raise RequestError(f"stop: expected a non-empty string or up to {MAX_STOPS} of them", "stop")
    return stops


def _latent(body: dict) -> LatentOptions:
    latent = _typed(body, "latent", dict) or {}
    unknown = set(latent) - {"decoder", "decoder_args", "max_latents"}
    if unknown:
        known = "decoder, decoder_args, max_latents"
        raise RequestError(f"latent: unknown field '{sorted(unknown)[0]}' (it takes {known})", "latent")
    decoder = _typed(latent, "decoder", str, within="latent.")
    args = _typed(latent, "decoder_args", dict, within="latent.") or {}
    max_latents = _typed(latent, "max_latents", int, within="latent.")
    if max_latents is not None and max_latents < 0:
        raise RequestError(f"latent.max_latents: expected >= 0, got {max_latents}", "latent.max_latents")
    return LatentOptions(decoder, args, max_latents)
