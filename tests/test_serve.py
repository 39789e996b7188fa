"""`latentreason serve` against a live server on a free local port, through the official `openai` client: replies
equal `latentreason eval`'s, concurrent requests equal each alone, streams reassemble, disconnects free rows,
a full queue answers 429, bad requests 400, the API key and the metrics. Tiny models, float64 where replies
served together are compared with replies served alone."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import torch

from latentreason import cli
from latentreason.methods.colar import CoLaR, CoLaRConfig
from latentreason.methods.pccot import PCCoT, PCCoTConfig
from latentreason.model.hybrid_gates import GATES_HEAD
from latentreason.model.latent_lm import LatentLM
from latentreason.serve.protocol import Limits
from latentreason.serve.run import BackgroundServer, ServeSettings
from latentreason.serve.text import TextStream
from tests.helpers import build_tiny_lm, chain_problems, eot_at_varied_steps, save_tiny_chat_model, untie_latent_tokens

openai = pytest.importorskip("openai")

KEY = "sk-test-key"
QUESTIONS = [p.question for p in chain_problems(40, seed=11)]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    """A pretrained-style tiny chat model with room for long replies."""
    return save_tiny_chat_model(tmp_path_factory.mktemp("serve") / "tinychat", positions=2048)


@pytest.fixture(scope="module")
def colar_dir(tmp_path_factory):
    """A saved (untrained) CoLaR model whose rows stop thinking at varied steps."""
    lm = build_tiny_lm("llama", seed=2)
    config = CoLaRConfig(max_latents=6, compression_factor=2, embedding_std=0.25, max_new_tokens=8)
    torch.manual_seed(0)
    CoLaR(config).prepare(lm)
    untie_latent_tokens(lm)
    eot_at_varied_steps(lm)
    lm.meta.update(method="colar", method_config=dataclasses.asdict(config))
    path = tmp_path_factory.mktemp("serve") / "colar"
    lm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pccot_dir(tmp_path_factory):
    """A saved (untrained) PCCoT model: 3 thoughts found by 2 Jacobi iterations."""
    lm = build_tiny_lm("llama", seed=4)
    config = PCCoTConfig(num_latents=3, jacobi_iterations=2, max_new_tokens=8)
    PCCoT(config).prepare(lm)
    untie_latent_tokens(lm)
    lm.meta.update(method="pccot", method_config=dataclasses.asdict(config))
    path = tmp_path_factory.mktemp("serve") / "pccot"
    lm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cot_dir(tmp_path_factory):
    """A saved (untrained) model of a text method trained here: plain decoding from its training layout."""
    lm = build_tiny_lm("llama", seed=3)
    untie_latent_tokens(lm)
    lm.meta.update(method="cot", method_config={"max_new_tokens": 8})
    path = tmp_path_factory.mktemp("serve") / "cot"
    lm.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def server(chat_dir):
    """A float64 server (replies served together and alone agree exactly) with an API key."""
    settings = ServeSettings(model=str(chat_dir), dtype="float64", max_batch=64, max_queue=64, api_key=KEY)
    with BackgroundServer(settings) as url:
        yield url


def client(url: str, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, **kw)


def chat(url: str, question: str, **kw):
    return client(url).chat.completions.create(model="tinychat", messages=[{"role": "user", "content": question}], **kw)


@dataclasses.dataclass
class Raw:
    status_code: int
    text: str

    def json(self):
        return json.loads(self.text)


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> Raw:
    """A plain HTTP request (GET, or POST with `body`), for what the openai client would not send."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return Raw(response.status, response.read().decode())
    except urllib.error.HTTPError as err:
        return Raw(err.code, err.read().decode())


def metric(url: str, name: str, key: str | None = KEY) -> float:
    text = http(url + "/metrics", headers={"Authorization": f"Bearer {key}"} if key else {}).text
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def eval_replies(model, problems_file, out, *flags) -> list[str]:
    argv = ["eval", "--model", str(model), "--file", str(problems_file), "--output-dir", str(out), *flags]
    assert cli.main(argv) == 0
    return [json.loads(line)["generated"] for line in (out / "predictions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def problems_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "chain.json"
    argv = ["data", "generate", "--task", "chain", "-n", "3", "--params", "{num_steps: 2}", "--out", str(path)]
    assert cli.main(argv) == 0
    return path


@pytest.mark.parametrize(
    ("decoder", "args"),
    [("text", {}), ("soft-thinking", {"max_thinking_steps": 4}), ("swireasoning", {})],  # a lane, a lane, own batch
)
def test_greedy_chat_replies_equal_eval(chat_dir, problems_file, tmp_path, decoder, args):
    flags = ["--max-new-tokens", "12", "--answer-mode", "flexible", "--decoder", decoder]
    generated = eval_replies(chat_dir, problems_file, tmp_path, *flags, "--decoder-args", json.dumps(args))
    questions = [p["question"] for p in json.loads(problems_file.read_text())]
    settings = ServeSettings(model=str(chat_dir), dtype="float32", decoder=decoder, decoder_args=args)
    with BackgroundServer(settings) as url:
        served = [chat(url, q.strip(), max_tokens=12, temperature=0) for q in questions]
    assert [r.choices[0].message.content.strip() for r in served] == generated
    soft = [r.usage.completion_tokens_details.reasoning_tokens for r in served]
    assert all(n == 0 for n in soft) if decoder == "text" else any(n > 0 for n in soft)


def test_an_hrpo_model_is_served_through_its_gates_by_default_and_equals_eval(chat_dir, problems_file, tmp_path):
    lm = LatentLM.from_pretrained(chat_dir, latent_tokens=False)
    gates = lm.add_head(GATES_HEAD, "hybrid_gates", top_k=8, temperature=1.0, answer_marker="\\boxed")
    gates.reset(0.05, 0.1, torch.Generator().manual_seed(0))  # open: the thoughts change the replies
    lm.save_pretrained(tmp_path / "hrpo")
    flags = ["--max-new-tokens", "12", "--answer-mode", "flexible"]
    generated = eval_replies(tmp_path / "hrpo", problems_file, tmp_path / "eval", *flags)  # eval's default: hrpo
    text = eval_replies(tmp_path / "hrpo", problems_file, tmp_path / "text", *flags, "--decoder", "text")
    assert generated != text
    questions = [p["question"].strip() for p in json.loads(problems_file.read_text())]
    # Rows joining a running HRPO batch are tested token for token in test_continuous.py.
    with BackgroundServer(ServeSettings(model=str(tmp_path / "hrpo"), dtype="float32", name="tinychat")) as url:
        served = [chat(url, q, max_tokens=12, temperature=0) for q in questions]
    assert [r.choices[0].message.content.strip() for r in served] == generated
    assert all(r.usage.completion_tokens_details.reasoning_tokens > 0 for r in served)


def test_greedy_replies_of_models_trained_here_equal_eval(colar_dir, pccot_dir, cot_dir, problems_file, tmp_path):
    questions = [p["question"] for p in json.loads(problems_file.read_text())]
    for model in (colar_dir, pccot_dir, cot_dir):
        generated = eval_replies(model, problems_file, tmp_path / model.name, "--max-new-tokens", "8")
        assert any(generated)
        with BackgroundServer(ServeSettings(model=str(model), dtype="float32")) as url:
            served = openai.OpenAI(base_url=url + "/v1", api_key="none")
            ask = dict(model=model.name, max_tokens=8, temperature=0)
            replies = [served.completions.create(prompt=q, **ask) for q in questions]
            assert [r.choices[0].text for r in replies] == generated
            latents = [r.usage.completion_tokens_details.reasoning_tokens for r in replies]
            if model == colar_dir:
                assert all(n > 0 for n in latents)  # latents counted
                capped = served.chat.completions.create(
                    model="colar",
                    messages=[{"role": "user", "content": questions[0]}],
                    max_tokens=8,
                    temperature=0,
                    extra_body={"latent": {"max_latents": 0}},
                )
                assert capped.usage.completion_tokens_details.reasoning_tokens == 0
            elif model == pccot_dir:
                assert latents == [3] * len(questions)  # its thoughts, found together
                streamed = served.completions.create(prompt=questions[0], stream=True, **ask)
                assert "".join(chunk.choices[0].text for chunk in streamed) == generated[0]
                fewer = served.completions.create(prompt=questions[0], extra_body={"latent": {"max_latents": 1}}, **ask)
                assert fewer.usage.completion_tokens_details.reasoning_tokens == 1
            else:
                assert latents == [0] * len(questions)


def mixed_request(i: int) -> dict:
    """Request i of a mix: greedy or sampled, n 1 or 3, varied lengths and stops, text or Soft Thinking."""
    kw = dict(max_tokens=4 + (i * 7) % 29, temperature=(0.0, 0.9, 1.6)[i % 3], top_p=(1.0, 0.8)[i % 2], seed=i)
    if i % 4 == 1:
        kw["n"] = 3
    if i % 5 == 2:
        kw["stop"] = ["e", "3"]
    if i % 3 == 1:
        kw["extra_body"] = {"latent": {"decoder": "soft-thinking", "decoder_args": {"max_thinking_steps": 3}}}
    return kw


def reply_of(response) -> list:
    return [(c.message.content, c.finish_reason) for c in response.choices] + [response.usage.model_dump()]


def test_32_concurrent_requests_each_equal_the_request_alone(server):
    alone = [reply_of(chat(server, QUESTIONS[i], **mixed_request(i))) for i in range(32)]
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda i: reply_of(chat(server, QUESTIONS[i], **mixed_request(i))), range(32)))
    assert together == alone
    reasons = {reason for reply in alone for _, reason in reply[:-1]}
    assert reasons == {"stop", "length"}
    assert any(reply[-1]["completion_tokens_details"]["reasoning_tokens"] > 0 for reply in alone)  # soft steps
    hot = chat(server, QUESTIONS[0], max_tokens=40, temperature=2.0, n=3, seed=5)
    assert len({c.message.content for c in hot.choices}) > 1  # the n samples differ


def test_a_stream_reassembles_to_the_whole_reply(server):
    for i in (1, 2, 5):
        kw = mixed_request(i)
        whole = chat(server, QUESTIONS[i], **kw)
        texts, reasons, usage = {}, {}, None
        for chunk in chat(server, QUESTIONS[i], stream=True, stream_options={"include_usage": True}, **kw):
            usage = chunk.usage or usage
            for c in chunk.choices:
                texts[c.index] = texts.get(c.index, "") + (c.delta.content or "")
                reasons[c.index] = c.finish_reason or reasons.get(c.index)
        assert [texts[c.index] for c in whole.choices] == [c.message.content for c in whole.choices]
        assert [reasons[c.index] for c in whole.choices] == [c.finish_reason for c in whole.choices]
        assert usage == whole.usage
    completion = client(server).completions.create(model="tinychat", prompt=QUESTIONS[3], max_tokens=9, temperature=0)
    streamed = client(server).completions.create(
        model="tinychat", prompt=QUESTIONS[3], max_tokens=9, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == completion.choices[0].text


def long_question(url: str) -> str:
    """A question whose greedy reply runs 150 tokens without a stop token."""
    for question in QUESTIONS:
        if chat(url, question, max_tokens=150, temperature=0).choices[0].finish_reason == "length":
            return question
    raise AssertionError("no question runs 150 tokens")


def test_a_client_that_disconnects_frees_its_rows(chat_dir):
    background = BackgroundServer(ServeSettings(model=str(chat_dir), api_key=KEY))
    served = background.app.state.served
    served.default.stop_ids = [-1]  # replies end only at max_tokens
    # 5 ms per model call: 1000 steps outlast any pause of a busy machine between reading and closing the stream,
    # so the reply cannot finish on its own before the disconnect is seen.
    slow = served.lm.backbone.register_forward_pre_hook(lambda *_: time.sleep(0.005))
    with slow, background as url:
        before = metric(url, "latentreason_cancelled_rows_total")
        stream = chat(url, QUESTIONS[0], max_tokens=1000, temperature=0, n=2, stream=True)
        next(iter(stream))  # generation has started
        stream.close()
        deadline = time.monotonic() + 30
        while metric(url, "latentreason_cancelled_rows_total") < before + 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert metric(url, "latentreason_cancelled_rows_total") == before + 2
        assert metric(url, "latentreason_running_rows") == 0
        assert chat(url, QUESTIONS[0], max_tokens=3).choices[0].finish_reason  # still serving


def test_a_full_queue_answers_429_and_every_accepted_request_completes(chat_dir):
    settings = ServeSettings(model=str(chat_dir), max_batch=1, max_queue=2)
    with BackgroundServer(settings) as url:
        question = long_question(url)
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            outcomes = list(pool.map(lambda _: attempt(url, question), range(12)))
        assert metric(url, "latentreason_queue_length", key=None) == 0
    assert "busy" in outcomes and any(o == "length" for o in outcomes)
    assert set(outcomes) <= {"busy", "length"}  # each accepted request ran to its end


def attempt(url: str, question: str) -> str:
    try:
        return (
            openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
            .chat.completions.create(
                model="tinychat", messages=[{"role": "user", "content": question}], max_tokens=150, temperature=0
            )
            .choices[0]
            .finish_reason
        )
    except openai.RateLimitError as err:
        assert err.status_code == 429 and err.body["type"] == "rate_limit_error"
        return "busy"


def test_the_deadline_ends_a_request_with_504(chat_dir):
    background = BackgroundServer(ServeSettings(model=str(chat_dir), timeout=0.3))
    background.app.state.served.default.stop_ids = [-1]  # replies end only at max_tokens: 1000 steps take seconds
    with background as url:
        body = {"model": "tinychat", "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 1000}
        response = http(url + "/v1/chat/completions", json.dumps(body).encode())
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "timeout"
        assert metric(url, "latentreason_running_rows", key=None) == 0


def post(url: str, body, headers=None) -> Raw:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json", **(headers or {})}
    return http(url + "/v1/chat/completions", content, headers)


GOOD = {"model": "tinychat", "messages": [{"role": "user", "content": "1 + 2"}], "max_tokens": 3}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "tinychat", "messages": [', None),  # malformed JSON
        ({**GOOD, "frequency_penalty": 0.5}, "frequency_penalty"),  # unknown field
        ({**GOOD, "max_tokens": -1}, "max_tokens"),
        ({**GOOD, "max_tokens": 10**6}, "max_tokens"),
        ({**GOOD, "messages": [{"role": "user", "content": "1 + 2 " * 3000}]}, "messages"),  # oversized prompt
        ({**GOOD, "n": 0}, "n"),
        ({**GOOD, "temperature": "hot"}, "temperature"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**GOOD, "messages": [{"role": "user", "content": ["image"]}]}, "messages[0].content"),
        ({**GOOD, "latent": {"decoder": "soft-thinking", "decoder_args": {"top_k": -3}}}, "latent"),
        ({**GOOD, "latent": {"decoder": "../model", "decoder_args": {}}}, "latent"),
        ({**GOOD, "latent": {"max_latents": 4}}, "latent"),  # a pretrained model has no latents
        ([GOOD], None),
    ],
)
def test_invalid_requests_get_400_in_openai_format(server, body, param):
    before = metric(server, "latentreason_generated_tokens_total")
    response = post(server, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"] and error["param"] == param
    assert metric(server, "latentreason_generated_tokens_total") == before  # never reached the model


def test_the_api_key_the_model_id_and_the_body_limit(server):
    assert post(server, GOOD).status_code == 200
    assert post(server, GOOD, {"Authorization": "Bearer wrong"}).status_code == 401
    assert post(server, GOOD, {"Authorization": ""}).status_code == 401
    assert http(server + "/health").status_code == 200  # open, for load balancers
    assert http(server + "/metrics").status_code == 401
    assert post(server, {**GOOD, "model": "/etc/passwd"}).status_code == 404
    assert declared_too_large(server) == 413
    models = client(server).models.list()
    assert [m.id for m in models.data] == ["tinychat"]


def declared_too_large(server: str) -> int:
    """The status of a request whose Content-Length exceeds the limit, read before its body is sent: the server
    answers at once and closes, so a client still sending the whole body could see a broken pipe instead."""
    url = urllib.parse.urlsplit(server)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {url.hostname}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {Limits().max_body_bytes + 1}\r\n\r\n{{"
    )
    with socket.create_connection((url.hostname, url.port), timeout=30) as connection:
        connection.sendall(head.encode())
        status_line = connection.makefile("rb").readline().decode()
    return int(status_line.split()[1])


def test_serve_flags_that_cannot_work_are_user_errors(chat_dir, colar_dir, capsys):
    for argv in (
        ["--model", str(chat_dir), "--decoder", "nope"],
        ["--model", str(colar_dir), "--decoder", "soft-thinking"],
        ["--model", str(chat_dir), "--max-n", "9", "--max-batch", "4"],
        ["--model", str(chat_dir), "--decoder", "soft-thinking", "--decoder-args", "{top_k: -1}"],
    ):
        assert cli.main(["serve", *argv]) == 2
        assert capsys.readouterr().err.startswith("latentreason: error: ")


def test_metrics_are_prometheus_text(server):
    chat(server, QUESTIONS[0], max_tokens=3)
    text = http(server + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    for name in (
        "latentreason_queue_length",
        "latentreason_running_rows",
        "latentreason_tokens_per_second",
        'latentreason_request_latency_seconds_bucket{le="+Inf"}',
        "latentreason_first_token_seconds_count",
    ):
        assert any(line.startswith(name) for line in text.splitlines()), name
    assert metric(server, "latentreason_generated_tokens_total") > 0


class CharTokenizer:
    """Ids are characters' code points; a multi-byte character arrives as two tokens (its halves)."""

    def decode(self, ids, skip_special_tokens=True):
        text = "".join(chr(i) if i < 0x10000 else "\ufffd" for i in ids if i >= 0)
        return text.replace(chr(0xE000) + chr(0xE001), "é").replace(chr(0xE000), "\ufffd")


def stream_all(tokens: list[int], stops: list[str]) -> tuple[list[str], str]:
    stream, pieces = TextStream(CharTokenizer(), stops), []
    for token in tokens:
        stream.push(token)
        pieces.append(stream.take())
    pieces.append(stream.take(final=True))
    return [p for p in pieces if p], stream.text


def test_text_stream_holds_back_stop_prefixes_and_split_characters():
    ids = [ord(c) for c in "ab"] + [0xE000, 0xE001] + [ord(c) for c in "cXYd"]
    pieces, text = stream_all(ids, ["XYZ"])
    assert "".join(pieces) == text == "abécXYd"
    assert "\ufffd" not in "".join(pieces)  # the split character came out whole
    pieces, text = stream_all(ids, ["XY", "q"])
    assert text == "abéc" and "".join(pieces) == "abéc"  # the stop string and what follows are cut
    assert not any("X" in p for p in pieces)


def test_a_crash_mid_step_answers_500_and_the_server_keeps_serving(chat_dir):
    background = BackgroundServer(ServeSettings(model=str(chat_dir)))
    engine, real_step = background.engine, background.engine._step
    crashes = [RuntimeError("a bug in a decoder")]

    def step_that_fails_once(lane):
        if crashes:
            raise crashes.pop()
        real_step(lane)

    engine._step = step_that_fails_once
    with background as url:
        body = {"model": "tinychat", "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 4}
        response = http(url + "/v1/chat/completions", json.dumps(body).encode())
        assert response.status_code == 500, response.text
        assert response.json()["error"]["type"] == "server_error"
        assert "a bug" not in response.text  # the traceback stays in the server's log
        assert metric(url, "latentreason_running_rows", key=None) == 0
        assert chat(url, QUESTIONS[0], max_tokens=4).choices[0].finish_reason in ("length", "stop")  # still serving
