"""`latentreason serve`: load the model, start the engine thread and the web server (uvicorn)."""

from __future__ import annotations

import argparse
import socket
import threading
from dataclasses import dataclass

from latentreason.errors import UserError
from latentreason.serve.protocol import Limits


@dataclass
class ServeSettings:
    model: str
    decoder: str | None = None  # None: hrpo for a model saved with HRPO's gates, else text (as `eval` picks)
    decoder_args: dict | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    name: str | None = None
    device: str | None = None
    dtype: str = "auto"
    max_batch: int = 64  # rows running at once
    max_queue: int = 256  # requests waiting
    timeout: float = 600.0  # seconds from arrival to the last token
    limits: Limits = Limits()


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    from latentreason.decoding import DECODERS
    from latentreason.model.pretrained import EXPECTED

    defaults, limits = ServeSettings(model=""), Limits()
    parser.add_argument("--model", required=True, help=EXPECTED)
    parser.add_argument(
        "--decoder",
        help="a pretrained model's decoder: " + ", ".join(sorted(DECODERS)) + " (default: hrpo for a model trained "
        "with HRPO, else text)",
    )
    parser.add_argument("--decoder-args", help="its arguments as a YAML mapping, e.g. '{max_thinking_steps: 64}'")
    parser.add_argument("--host", default=defaults.host, help="address to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $LATENTREASON_API_KEY; none: no key)"
    )
    parser.add_argument("--served-model-name", help="the model id clients send (default: --model's last part)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16", "float64"), default="auto")
    parser.add_argument("--max-batch", type=int, default=defaults.max_batch, help="rows generated at once")
    parser.add_argument(
        "--max-queue", type=int, default=defaults.max_queue, help="requests waiting; more are answered 429"
    )
    parser.add_argument("--timeout", type=float, default=defaults.timeout, help="seconds a request may take (504)")
    parser.add_argument("--max-tokens", type=int, default=limits.max_tokens, help="largest max_tokens allowed")
    parser.add_argument("--max-prompt-tokens", type=int, default=limits.max_prompt_tokens)
    parser.add_argument("--max-n", type=int, default=limits.max_n, help="largest n (choices per request)")
    parser.add_argument("--max-body-bytes", type=int, default=limits.max_body_bytes)


def settings_from_args(args) -> ServeSettings:
    import os

    from latentreason.config import yaml_mapping

    for flag in ("max_batch", "max_queue", "max_tokens", "max_prompt_tokens", "max_n", "max_body_bytes", "port"):
        if getattr(args, flag) < (0 if flag == "port" else 1):
            raise UserError(f"--{flag.replace('_', '-')}: expected a positive number, got {getattr(args, flag)}")
    if args.timeout <= 0:
        raise UserError(f"--timeout: expected seconds > 0, got {args.timeout}")
    if args.max_n > args.max_batch:
        raise UserError(f"--max-n {args.max_n}: more than --max-batch {args.max_batch} rows could never run")
    limits = Limits(
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens=args.max_tokens,
        default_max_tokens=min(Limits.default_max_tokens, args.max_tokens),
        max_n=args.max_n,
        max_body_bytes=args.max_body_bytes,
    )
    return ServeSettings(
        model=args.model,
        decoder=args.decoder,
        decoder_args=yaml_mapping(args.decoder_args, "--decoder-args"),
        host=args.host,
        port=args.port,
        api_key=args.api_key or os.environ.get("LATENTREASON_API_KEY") or None,
        name=args.served_model_name,
        device=args.device,
        dtype=args.dtype,
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        timeout=args.timeout,
        limits=limits,
    )


def build_server(settings: ServeSettings):
    """(the Starlette app, its engine) for `settings`, the model loaded."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise UserError("latentreason serve needs the serve extra: pip install 'latentreason[serve]'") from None
    from latentreason.model.device import default_device, eval_dtype
    from latentreason.serve.app import build_app
    from latentreason.serve.engine import Engine
    from latentreason.serve.model import load_served

    device = default_device(settings.device)
    dtype = eval_dtype(settings.dtype, device)
    served = load_served(settings.model, settings.decoder, settings.decoder_args or {}, device, dtype, settings.name)
    engine = Engine(settings.max_batch, settings.max_queue)
    app = build_app(served, engine, settings.limits, settings.api_key, settings.timeout)
    app.state.served = served
    return app, engine


def serve(settings: ServeSettings) -> None:
    """Serve until interrupted."""
    import uvicorn

    app, _ = build_server(settings)
    from latentreason.processes import say

    say(f"serving {settings.name or settings.model} on http://{settings.host}:{settings.port}/v1")
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")


class BackgroundServer:
    """A server on a free local port in a thread (tests and `bench serve`): `with BackgroundServer(s) as url:`."""

    def __init__(self, settings: ServeSettings):
        import uvicorn

        self.app, self.engine = build_server(settings)
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((settings.host, 0))
        config = uvicorn.Config(self.app, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def __enter__(self) -> str:
        import time

        self.thread.start()
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.socket.close()
