"""What did the model think? Per problem: each latent group decoded back to text by the step decoder,
the stop head's probability at each group start, and the vocabulary tokens nearest to each latent."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latentreason.data.problems import Problem


@torch.no_grad()
def inspect_problems(lm, method, problems: list[Problem], top_k: int = 3, max_step_tokens: int = 32) -> list[dict]:
    """One report per problem for a latent method (`method.solver(lm)` must be a latent solver).

    The thoughts are the solver's own: its prompts (CoLaR's `(speed r)`) and its rollout (PCCoT's Jacobi
    iterations), so what is shown is what evaluation scores."""
    solver = method.solver(lm)
    out = solver.rollout(solver.prompts(problems))
    c = getattr(method.config, "c_thought", 1)
    vocab = F.normalize(lm.embed.weight.float(), dim=-1)  # [V, d]
    decoder = getattr(method, "decoder", None)
    stop_head = lm.heads["stop_head"] if "stop_head" in lm.heads else None
    reports = []
    for row, problem in enumerate(problems):
        k = int(out.num_latents[row])
        latents = out.latent_inputs[row, :k]  # [k, d]
        near = (F.normalize(latents.float(), dim=-1) @ vocab.T).topk(top_k, dim=-1)  # [k, top_k]
        groups = []
        texts = decoder.generate(latents.reshape(-1, c, latents.shape[-1]), max_step_tokens) if decoder and k else []
        for g in range(k // c):
            group = {
                "latents": [
                    {
                        "nearest": [
                            (lm.tokenizer.convert_ids_to_tokens(int(i)), round(float(s), 3))
                            for i, s in zip(near.indices[j], near.values[j])
                        ],
                        "norm": round(float(latents[j].norm()), 3),
                    }
                    for j in range(g * c, (g + 1) * c)
                ]
            }
            if texts:
                group["decoded"] = lm.tokenizer.decode(texts[g], skip_special_tokens=True)
            if stop_head is not None:
                group["p_stop"] = round(float(stop_head(latents[g * c][None]).softmax(-1)[0, 1]), 3)
            groups.append(group)
        answer = lm.tokenizer.decode(out.tokens[row, : out.lengths[row]], skip_special_tokens=True)
        reports.append(
            {
                "question": problem.question,
                "reference_steps": problem.steps,
                "reference": problem.answer,
                "latents": k,
                "groups": groups,
                "answer_text": answer,
            }
        )
    return reports


def format_report(report: dict) -> str:
    lines = [
        f"question: {report['question']}",
        f"reference: {' '.join(report['reference_steps'])} ### {report['reference']}",
        f"thought for {report['latents']} latents:",
    ]
    for g, group in enumerate(report["groups"]):
        head = f"  group {g + 1}"
        if "decoded" in group:
            head += f": decoded {group['decoded']!r}"
        if "p_stop" in group:
            head += f"  (p_stop {group['p_stop']:.2f})"
        lines.append(head)
        for latent in group["latents"]:
            near = ", ".join(f"{tok!r} {sim:.2f}" for tok, sim in latent["nearest"])
            lines.append(f"    |z| {latent['norm']:.2f}  nearest: {near}")
    lines.append(f"answer: {report['answer_text']!r}")
    return "\n".join(lines)
