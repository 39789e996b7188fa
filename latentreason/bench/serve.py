"""`latentreason bench serve`: the server's continuous batching against serving the same requests one at a time.

For Soft Thinking on SmolLM2-135M-Instruct and for a latent model (SmolLM2 with Coconut's latent layout and
identity thought map, 3 latents, untrained: the speed is what is measured), through a live server on a free
local port and plain HTTP clients:
  <kind>_throughput_ratio   the time to serve `requests` requests of mixed lengths one after the other / the
                            time when all are sent at once (each client waits for its reply)
  <kind>_p50_s, _p99_s      the latency of a request among the concurrent ones
Then a soak: `soak` short text requests, `concurrency` at a time; every one must succeed, and the process's
resident memory after it is compared with after the first tenth (soak_rss_growth_mb). The last line printed
is one JSON object; `serve_throughput_ratio`, `p50_s` and `p99_s` are the lower ratio of the two kinds and
the latencies over both.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from latentreason.data.generators import generate


@dataclass
class ServeBenchConfig:
    requests: int = 64
    min_tokens: int = 16  # max_tokens of the requests spread evenly over [min_tokens, max_tokens]
    max_tokens: int = 64
    soak: int = 1000
    soak_tokens: int = 4
    concurrency: int = 64
    tiny: bool = False  # tiny random models instead of SmolLM2 (--quick)


def post(url: str, body: dict) -> tuple[float, dict]:
    """(seconds, the JSON reply) of one request: chat when it has messages, else a completion."""
    endpoint = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    request = urllib.request.Request(url + endpoint, json.dumps(body).encode(), {"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as response:
        reply = json.loads(response.read())
    return time.perf_counter() - start, reply


def bodies(cfg: ServeBenchConfig, model: str, chat: bool) -> list[dict]:
    """The requests: arithmetic questions (as a chat turn for a pretrained model), max_tokens mixed."""
    questions = [p.question for p in generate("arithmetic", cfg.requests, seed=0)]
    span = max(cfg.max_tokens - cfg.min_tokens, 0)
    lengths = [cfg.min_tokens + (i * 37) % (span + 1) for i in range(cfg.requests)]  # mixed, spread evenly
    prompts = [{"messages": [{"role": "user", "content": q}]} if chat else {"prompt": q} for q in questions]
    return [{"model": model, **p, "max_tokens": n, "temperature": 0} for p, n in zip(prompts, lengths)]


def one_then_all(url: str, requests: list[dict], concurrency: int) -> dict:
    """Each request alone, one after the other, then all at once; their timings (and replies that must agree)."""
    start = time.perf_counter()
    alone = [post(url, body) for body in requests]
    alone_s = time.perf_counter() - start
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        together = list(pool.map(lambda body: post(url, body), requests))
    together_s = time.perf_counter() - start
    same = [a[1]["choices"] for a in alone] == [t[1]["choices"] for t in together]
    latencies = sorted(t[0] for t in together)
    return {
        "throughput_ratio": alone_s / together_s,
        "alone_s": alone_s,
        "together_s": together_s,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "latencies": latencies,
        "same_replies": same,
        "tokens": sum(t[1]["usage"]["completion_tokens"] for t in together),
    }


def percentile(sorted_values: list[float], q: float) -> float:
    at = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[at]


def resident_mb() -> float:
    """This process's resident memory (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return 0.0
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(url: str, model: str, cfg: ServeBenchConfig) -> dict:
    body = {"model": model, "prompt": "1 + 1 =", "max_tokens": cfg.soak_tokens, "temperature": 0.8}
    errors, rss = 0, []

    def one(i: int) -> bool:
        try:
            post(url, {**body, "seed": i})
            return True
        except Exception:  # counted, the soak goes on
            return False

    tenth = max(cfg.soak // 10, 1)
    with ThreadPoolExecutor(cfg.concurrency) as pool:
        for start in range(0, cfg.soak, tenth):
            errors += sum(not ok for ok in pool.map(one, range(start, min(start + tenth, cfg.soak))))
            rss.append(resident_mb())
    return {"soak_requests": cfg.soak, "soak_errors": errors, "soak_rss_growth_mb": rss[-1] - rss[0]}


def latent_model_dir(base, directory: Path) -> Path:
    """`base` (a LatentLM as it is) given the latent tokens and saved as a Coconut model with 3 latents."""
    import dataclasses

    from latentreason.methods.coconut import CoconutConfig
    from latentreason.model.latent_lm import LatentLM

    lm = LatentLM(base.model, base.tokenizer)  # adds <bot>, <latent>, <eot>
    config = CoconutConfig(model_name_or_path="bench", c_thought=1, max_latent_stage=3, max_new_tokens=64)
    lm.meta.update(method="coconut", method_config=dataclasses.asdict(config))
    lm.save_pretrained(directory)
    return directory


def run_serve_bench(cfg: ServeBenchConfig | None = None, device: str | None = None) -> dict:
    from latentreason.bench.decode import DecodeBenchConfig, load_model
    from latentreason.serve.run import BackgroundServer, ServeSettings

    cfg = cfg or ServeBenchConfig()
    base = load_model(DecodeBenchConfig(tiny=cfg.tiny), device or "cpu")
    figures: dict = {"requests": cfg.requests, "tokens": [cfg.min_tokens, cfg.max_tokens]}
    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = Path(tmp) / "pretrained" if cfg.tiny else "smollm2"
        if cfg.tiny:
            base.model.save_pretrained(pretrained, safe_serialization=True)
            base.tokenizer.save_pretrained(pretrained)
        latent = latent_model_dir(base, Path(tmp) / "latent")
        del base
        kinds = {
            "soft_thinking": (pretrained, "soft-thinking", {"max_thinking_steps": 16}),
            "latent": (latent, "text", {}),
        }
        common = ServeSettings(model="", device=device, max_batch=cfg.concurrency, max_queue=max(cfg.soak, 1024))
        for kind, (model, decoder, args) in kinds.items():
            settings = replace(common, model=str(model), decoder=decoder, decoder_args=args, name=kind)
            with BackgroundServer(settings) as url:
                result = one_then_all(url, bodies(cfg, kind, chat=kind == "soft_thinking"), cfg.concurrency)
                if kind == "soft_thinking":
                    figures.update(soak(url, kind, cfg))
            latencies += result.pop("latencies")
            figures.update({f"{kind}_{key}": value for key, value in result.items()})
    latencies.sort()
    figures.update(
        serve_throughput_ratio=min(figures[f"{kind}_throughput_ratio"] for kind in kinds),
        p50_s=percentile(latencies, 50),
        p99_s=percentile(latencies, 99),
        mean_s=statistics.fmean(latencies),
    )
    print_figures(figures, list(kinds))
    return figures


def print_figures(figures: dict, kinds: list[str]) -> None:
    print(f"serve benchmark: {figures['requests']} requests, max_tokens {figures['tokens'][0]}-{figures['tokens'][1]}")
    header = ("model", "one at a time", "all at once", "ratio", "p50", "p99")
    print("| " + " | ".join(f"{name:>{width}s}" for name, width in zip(header, (14, 13, 11, 6, 7, 7))) + " |")
    for kind in kinds:
        f = {key[len(kind) + 1 :]: value for key, value in figures.items() if key.startswith(kind + "_")}
        print(
            f"| {kind:14s} | {f['alone_s']:12.1f}s | {f['together_s']:10.1f}s | {f['throughput_ratio']:5.2f}x "
            f"| {f['p50_s']:6.2f}s | {f['p99_s']:6.2f}s |"
        )
    print(
        f"soak: {figures['soak_requests']} requests, {figures['soak_errors']} errors, resident memory "
        f"{figures['soak_rss_growth_mb']:+.1f} MB from the first tenth to the end"
    )
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}))
