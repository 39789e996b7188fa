"""Latent-SFT: the superposition against a dense reference, the two attention masks against hand-built ones,
the masks honoured by the model, both stages training, save -> load -> solve, and bad config values."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from latentreason.data.generators.chain import generate_chain
from latentreason.engine.latent_pass import latent_forward
from latentreason.engine.mixture import superposition
from latentreason.engine.rollout import fixed_latents, latent_rollout
from latentreason.errors import ConfigError
from latentreason.methods.latent_sft import LatentSFT, LatentSFTConfig, masked_hidden
from latentreason.methods.latent_sft_layout import decoder_batch, encoder_batch
from latentreason.model.latent_lm import LatentLM
from latentreason.training.run import run_training
from tests.helpers import EXACT, build_tiny_lm, chain_problems, tiny_lm, tiny_train_config

S, BOT, EOT, PAD = 90, 91, 92, 0  # slot (<|latent|>), <bot>, <eot>, pad ids of the hand-built examples
IDS = SimpleNamespace(latent_id=S, bot_id=BOT, eot_id=EOT, pad_id=PAD)


def grid(rows: list[str]) -> torch.Tensor:
    """A hand-written mask: row = query, column = key, '1' = may attend."""
    return torch.tensor([[c == "1" for c in row.replace(" ", "")] for row in rows])


def test_superposition_equals_a_dense_softmax_over_the_embedding_restricted_to_the_top_k():
    lm = tiny_lm()
    torch.manual_seed(0)
    logits = torch.randn(3, lm.embed.weight.shape[0]) * 3  # [B, V]
    E = lm.embed.weight.detach()  # [V, d]
    for tau in (1.0, 0.5):
        p = (logits / tau).softmax(-1)  # [B, V]
        assert torch.allclose(superposition(lm.embed, logits, E.shape[0], tau), p @ E, atol=1e-5)  # every token kept
        top = p.topk(4, dim=-1).indices
        kept = torch.zeros_like(p).scatter(1, top, p.gather(1, top))
        dense = (kept / kept.sum(-1, keepdim=True)) @ E  # the top-4 renormalised, as a dense product
        assert torch.allclose(superposition(lm.embed, logits, 4, tau), dense, atol=1e-5)


def test_gumbel_superposition_at_a_tiny_temperature_is_one_of_the_top_k_embeddings():
    lm = tiny_lm()
    torch.manual_seed(1)
    logits = torch.randn(5, lm.embed.weight.shape[0])
    mixed = superposition(lm.embed, logits, 3, gumbel_tau=1e-4)  # [5, d]
    rows = lm.embed(logits.topk(3, dim=-1).indices)  # [5, 3, d]
    assert (mixed[:, None] - rows).abs().amax(-1).min(-1).values.max() < 1e-4  # one of the 3 rows per problem


def test_induction_mask_hides_earlier_slots_and_nothing_else():
    # prompt [1 2], CoT [3 4 5 6 7], chunks of 2: 1 2 3 4 S 5 6 S 7 S
    packed = encoder_batch([[1, 2]], [[3, 4, 5, 6, 7]], 2, S, PAD)
    assert packed.ids[0].tolist() == [1, 2, 3, 4, S, 5, 6, S, 7, S]
    expected = grid(
        [
            "1000000000",
            "1100000000",
            "1110000000",
            "1111000000",
            "1111100000",  # S1 reads question + chunk 1
            "1111010000",  # chunk 2 never reads S1
            "1111011000",
            "1111011100",  # S2: the text so far, not S1
            "1111011010",
            "1111011011",  # S3
        ]
    )
    assert torch.equal(packed.mask[0], expected)
    assert packed.positions[0].tolist() == list(range(10))


def test_supervision_mask_and_positions_match_a_hand_built_layout():
    # prompt [1 2], CoT [3 4 5 6 7] in chunks [3 4] [5 6] [7], answer [8 9]:
    # 1 2 <bot> L1 5 6 L2 7 L3 <eot> 8 9 (L_j is followed by chunk j + 1)
    packed = decoder_batch(IDS, [[1, 2]], [[3, 4, 5, 6, 7]], [[8, 9]], 2)
    assert packed.ids[0].tolist() == [1, 2, BOT, S, 5, 6, S, 7, S, EOT, 8, 9]
    expected = grid(
        [
            "100000000000",
            "110000000000",
            "111000000000",  # <bot>
            "111100000000",  # L1: context + itself
            "000110000000",  # chunk 2 token 1: L1 + itself only
            "000111000000",
            "111100100000",  # L2: context, L1, itself
            "000000110000",  # chunk 3: L2 + itself
            "111100101000",  # L3
            "111100101100",  # <eot>: context + latents, never the CoT
            "111100101110",
            "111100101111",
        ]
    )
    assert torch.equal(packed.mask[0], expected)
    assert packed.positions[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 5, 6, 7, 8]
    assert packed.labels[0].tolist() == [-100] * 9 + [EOT, 8, 9]
    assert packed.chunk_labels[0].tolist() == [-100] * 4 + [5, 6, -100, 7] + [-100] * 4


def test_masks_of_a_padded_row_equal_its_masks_alone_and_pads_see_only_themselves():
    long, short = ([1, 2], [3, 4, 5, 6, 7], [8, 9]), ([1], [3], [8])
    batch = decoder_batch(IDS, *[list(x) for x in zip(long, short)], 2)
    alone = decoder_batch(IDS, *[[x] for x in short], 2)
    n = alone.ids.shape[1]
    assert torch.equal(batch.mask[1, :n, :n], alone.mask[0])
    assert torch.equal(batch.positions[1, :n], alone.positions[0])
    assert torch.equal(batch.mask[1, n:], torch.eye(batch.ids.shape[1], dtype=torch.bool)[n:])
    enc = encoder_batch([long[0], short[0]], [long[1], short[1]], 2, S, PAD)
    enc_alone = encoder_batch([short[0]], [short[1]], 2, S, PAD)
    m = enc_alone.ids.shape[1]
    assert torch.equal(enc.mask[1, :m, :m], enc_alone.mask[0])


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_the_model_honours_the_supervision_mask_the_answer_is_the_inference_layouts(model_type):
    """The answer's states under the stage-1 mask equal a plain causal call on `prompt <bot> L1..Ln <eot> answer`
    with the same latent inputs: the chunks are invisible to it and its positions are the inference ones."""
    lm = build_tiny_lm(model_type, dtype=torch.float64)
    prompt, cot, answer = [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]
    packed = decoder_batch(lm, [prompt], [cot], [answer], 2)
    torch.manual_seed(0)
    latents = torch.randn(3, lm.embed.weight.shape[1], dtype=torch.float64)  # [n, d]
    embeds = lm.embed(packed.ids).masked_scatter(packed.is_slot[..., None], latents)
    with torch.no_grad():
        hidden = masked_hidden(lm.model, embeds, packed)[0, -3:]  # <eot> + answer
        plain = torch.cat(
            [lm.embed(torch.tensor(prompt + [lm.bot_id])), latents, lm.embed(torch.tensor([lm.eot_id] + answer))]
        )
        reference = lm.backbone(inputs_embeds=plain[None]).last_hidden_state[0, -3:]
    assert torch.allclose(hidden, reference, **EXACT)


def losses_over_steps(method, lm, problems, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(lm.parameters(), lr=3e-3)
    out = []
    for _ in range(steps):
        loss, _ = method.loss(lm, method.collate(lm, problems))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        out.append(float(loss.detach()))
    return out


def test_both_stages_reduce_their_loss_and_stage_two_leaves_the_encoder_alone():
    lm = build_tiny_lm().train()
    method = LatentSFT(LatentSFTConfig(encoder_steps=1, max_steps=2, gumbel_tau=0.5))
    method.prepare(lm)
    problems = chain_problems(8)
    assert method.start_step(0, 1) is False and method.stage == 1
    stage1 = losses_over_steps(method, lm, problems, 12)
    assert stage1[-1] < 0.7 * stage1[0]
    encoder = [p.detach().clone() for p in lm.heads["latent_encoder"].parameters()]
    assert method.start_step(1, 1) is True and method.stage == 2  # fresh optimizer moments for stage 2
    stage2 = losses_over_steps(method, lm, problems, 12)
    assert stage2[-1] < 0.7 * stage2[0]
    assert all(torch.equal(a, b) for a, b in zip(encoder, lm.heads["latent_encoder"].parameters()))


def test_stage_two_without_teacher_forcing_feeds_exactly_what_the_solver_feeds():
    lm = build_tiny_lm(dtype=torch.float64).eval()
    method = LatentSFT(LatentSFTConfig(teacher_forcing=False, max_latents=6))
    method.prepare(lm)
    method.start_step(0, 1)  # encoder_steps 200: stage 1 ...
    method.stage = 2  # ... but this test wants the stage-2 batch
    problems = chain_problems(3)
    batch = method.collate(lm, problems)["latent_batch"]
    n = batch.max_latents
    with torch.no_grad():
        trained = latent_forward(lm, batch, method.thought_map(lm)).latent_inputs  # [B, n, d]
        prompts = method.solver(lm).prompts(problems)
        rolled = latent_rollout(lm, prompts, method.thought_map(lm), fixed_latents(n), n, 0).latent_inputs
    assert n == 6 and torch.allclose(trained, rolled, **EXACT)


def test_latent_sft_trains_saves_and_reloads_and_its_solver_is_batch_independent(tmp_path):
    config = tiny_train_config(
        LatentSFTConfig, tmp_path / "run", encoder_steps=3, max_steps=6, learning_rate=3e-3, max_latents=6
    )
    result = run_training("latent-sft", config, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    stages = [entry["stage"] for entry in log if "stage" in entry]
    assert stages[0] == 1.0 and stages[-1] == 2.0
    lm = LatentLM.from_pretrained(result.final_dir).eval()
    assert "latent_encoder" in lm.heads
    problems = generate_chain(5, seed=5, num_steps=2)
    solver = LatentSFT(config).solver(lm)
    batched = solver.solve(problems)
    single = [solver.solve([p])[0] for p in problems]
    assert [(s.text, s.latent_tokens) for s in batched] == [(s.text, s.latent_tokens) for s in single]
    assert all(0 <= s.latent_tokens <= 6 for s in batched)
    again = LatentSFT(config).solver(LatentLM.from_pretrained(result.final_dir).eval()).solve(problems)
    assert [s.text for s in again] == [s.text for s in batched]


def test_the_solver_stops_a_row_exactly_when_the_model_predicts_eot():
    lm = build_tiny_lm().eval()
    d = lm.embed.weight.shape[1]
    with torch.no_grad():  # <eot>'s output row points along the first axis, 50 times longer than any other
        lm.lm_head.weight[lm.eot_id] = torch.nn.functional.one_hot(torch.tensor(0), d) * 50.0
    solver = LatentSFT(LatentSFTConfig(max_latents=4, max_new_tokens=2)).solver(lm)
    hidden = torch.zeros(3, d)
    hidden[0, 0], hidden[1, 0] = 100.0, -100.0  # row 0 says <eot>, row 1 certainly not, row 2 ties at 0
    stop = solver.controller(0, hidden, hidden, None, torch.arange(3))
    assert stop.tolist() == (lm.lm_head(hidden).argmax(-1) == lm.eot_id).tolist()
    assert stop[0] and not stop[1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("chunk_size", 0, "chunk_size"),
        ("latent_top_k", 0, "latent_top_k"),
        ("latent_temperature", 0.0, "latent_temperature"),
        ("encoder_steps", -1, "encoder_steps"),
        ("kl_weight", -1.0, "kl_weight"),
        ("gumbel_tau", -0.5, "gumbel_tau"),
    ],
)
def test_bad_config_values_name_the_field(field, value, message):
    with pytest.raises(ConfigError, match=message):
        LatentSFTConfig(max_steps=1000, **{field: value})
