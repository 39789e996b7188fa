"""The HTTP side: OpenAI's endpoints on Starlette, each request checked, queued on the engine and answered
whole or streamed as server-sent events.

    POST /v1/chat/completions   the model's chat template (a model trained here: one user message)
    POST /v1/completions        a plain prompt
    GET  /v1/models             the one model served
    GET  /health                200 once the model is loaded
    GET  /metrics               Prometheus text: queue length, running rows, tokens/s, latency histograms
With an API key, /v1/* and /metrics need `Authorization: Bearer <key>` (compared in constant time).
A client that disconnects cancels its request: its rows leave the batch at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import time
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from latentreason.serve.engine import Engine
from latentreason.serve.model import Job, ServedModel
from latentreason.serve.protocol import Limits, RequestError, parse_ask, parse_body

log = logging.getLogger("latentreason.serve")


def error_response(error: RequestError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


def build_app(
    served: ServedModel, engine: Engine, limits: Limits, api_key: str | None = None, timeout: float = 600.0
) -> Starlette:
    served.limits = limits

    def authorised(request: Request) -> bool:
        if not api_key:
            return True
        header = request.headers.get("authorization", "")
        token = header[len("Bearer ") :] if header.startswith("Bearer ") else ""
        return hmac.compare_digest(token.encode(), api_key.encode())

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limits.max_body_bytes):
            raise RequestError(f"the body is larger than {limits.max_body_bytes} bytes", None, 413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                raise RequestError(f"the body is larger than {limits.max_body_bytes} bytes", None, 413)
        return bytes(body)

    async def generate(request: Request, chat: bool) -> Response:
        if not authorised(request):
            return error_response(RequestError("invalid API key", None, 401, "authentication_error"))
        try:
            ask = parse_ask(parse_body(await read_body(request)), chat, limits)
            job = served.job(ask)
        except RequestError as err:
            return error_response(err)
        events: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        job.post = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
        job.deadline = job.received + timeout
        try:
            engine.submit(job)
        except RequestError as err:
            return error_response(err)
        name = "chatcmpl" if chat else "cmpl"
        reply = Answer(job, served.name, f"{name}-{uuid.uuid4().hex}", int(time.time()))
        if ask.stream:
            return StreamingResponse(reply.stream(events, request, engine), media_type="text/event-stream")
        return await reply.whole(events, request, engine)

    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    async def models(request: Request) -> Response:
        if not authorised(request):
            return error_response(RequestError("invalid API key", None, 401, "authentication_error"))
        card = {"id": served.name, "object": "model", "created": 0, "owned_by": "latentreason"}
        return JSONResponse({"object": "list", "data": [card]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics(request: Request) -> Response:
        if not authorised(request):
            return error_response(RequestError("invalid API key", None, 401, "authentication_error"))
        text = engine.metrics.render(engine.queued, engine.running)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    return Starlette(routes=routes, lifespan=lifespan)


async def disconnected(request: Request) -> None:
    """Returns once the client has gone (the body has been read, so only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Answer:
    """One job's response: OpenAI's completion object, or its chunks as server-sent events."""

    def __init__(self, job: Job, model: str, id_: str, created: int):
        self.job, self.model, self.id, self.created = job, model, id_, created
        self.chat = job.ask.chat

    def envelope(self, choices: list[dict], chunk: bool = False) -> dict:
        kind = "chat.completion" if self.chat else "text_completion"
        return {
            "id": self.id,
            "object": kind + (".chunk" if chunk and self.chat else ""),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def choice(self, index: int, text: str | None, finish: str | None, chunk: bool) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "finish_reason": finish, "logprobs": None}
        if chunk:
            return {"index": index, "delta": {} if text is None else {"content": text}, "finish_reason": finish}
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "finish_reason": finish, "logprobs": None}

    async def next_event(self, events: asyncio.Queue, gone: asyncio.Task, engine: Engine):
        """The engine's next event for this job; None when the client left first (the job is cancelled)."""
        getting = asyncio.ensure_future(events.get())
        await asyncio.wait({getting, gone}, return_when=asyncio.FIRST_COMPLETED)
        if getting.done():
            return getting.result()
        getting.cancel()
        engine.cancel(self.job)
        return None

    async def whole(self, events: asyncio.Queue, request: Request, engine: Engine) -> Response:
        gone = asyncio.ensure_future(disconnected(request))
        try:
            while True:
                event = await self.next_event(events, gone, engine)
                if event is None:
                    return Response(status_code=499)  # nobody reads it
                if event[0] == "error":
                    return error_response(event[1])
                if event[0] == "done":
                    _, usage, texts = event
                    choices = [self.choice(i, text, finish, False) for i, (text, finish) in enumerate(texts)]
                    return JSONResponse({**self.envelope(choices), "usage": usage})
        finally:
            gone.cancel()

    async def stream(self, events: asyncio.Queue, request: Request, engine: Engine):
        gone = asyncio.ensure_future(disconnected(request))
        try:
            if self.chat:  # OpenAI's first chunk gives each choice its role
                for index in range(self.job.rows):
                    first = {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                    yield sse(self.envelope([first], chunk=True))
            while True:
                event = await self.next_event(events, gone, engine)
                if event is None:
                    return
                if event[0] == "error":
                    yield sse(event[1].body())
                    return
                if event[0] == "delta":
                    yield sse(self.envelope([self.choice(event[1], event[2], None, True)], chunk=True))
                elif event[0] == "finish":
                    yield sse(self.envelope([self.choice(event[1], None, event[2], True)], chunk=True))
                elif event[0] == "done":
                    if self.job.ask.include_usage:
                        yield sse({**self.envelope([], chunk=True), "usage": event[1]})
                    yield "data: [DONE]\n\n"
                    return
        finally:  # also when the response is cancelled under us: a finished job is not found, nothing happens
            gone.cancel()
            engine.cancel(self.job)


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"
