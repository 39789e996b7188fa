"""Token Assorted's latent codes as vocabulary: `<|code_0|>` ... `<|code_{K-1}|>`, added after every other token.

Each code's input (and untied output) row starts as `rows[k]`, the mean embedding of the text its chunks
stood for, so a new code already points where its text did (codes no chunk chose get the mean of all rows).
"""

from __future__ import annotations

import torch

from latentreason.errors import UserError

CODE_TOKEN = "<|code_{}|>"


def add_code_tokens(lm, rows: torch.Tensor) -> int:
    """Add len(rows) code tokens to `lm` (rows: [K, d] their initial embeddings); returns the first code's id."""
    names = [CODE_TOKEN.format(k) for k in range(rows.shape[0])]
    known = [n for n in names if n in lm.tokenizer.get_vocab()]
    if known:
        raise UserError(f"the model already has code tokens ({known[0]}, ...): it was trained with codes before")
    lm.tokenizer.add_tokens(names, special_tokens=True)  # special: decoding with skip_special_tokens drops them
    lm.model.resize_token_embeddings(len(lm.tokenizer), mean_resizing=False)
    first = first_code_id(lm.tokenizer, rows.shape[0])
    with torch.no_grad():
        for matrix in {lm.model.get_input_embeddings().weight, lm.model.get_output_embeddings().weight}:
            matrix[first : first + rows.shape[0]] = rows.to(matrix)
    return first


def first_code_id(tokenizer, count: int) -> int:
    """The id of `<|code_0|>`, checking that the `count` codes have consecutive ids."""
    ids = tokenizer.convert_tokens_to_ids([CODE_TOKEN.format(k) for k in range(count)])
    if None in ids or ids != list(range(ids[0], ids[0] + count)) or ids[0] == tokenizer.unk_token_id:
        raise UserError(f"the tokenizer does not hold the {count} code tokens {CODE_TOKEN.format(0)}... in order")
    return ids[0]
