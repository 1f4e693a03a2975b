"""Packed training rows as a [rows, length] batch whose mask keeps every example to itself.

TRL's padding-free collator concatenates a micro-batch's packed rows into one long sequence (rows x max_length
tokens), which SDPA then attends over as a whole: 4 rows of 512 cost a 2048 x 2048 attention where four
512 x 512 blocks are all that is needed, and transformers finds the examples' boundaries with a GPU-to-CPU
sync in every forward. Measured on a Mistral-7B-shaped model on an H100, attention was 38% of a step's GPU time.
Here each packed row stays a row, and a 4-D additive mask, built on the CPU with the batch, lets a token see
only the earlier tokens of its own example, exactly as padding-free packing does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from zephyr.trl_compat import NUM_TOKENS, SEQ_LENGTHS


@dataclass
class PackedRowsCollator:
    pad_token_id: int
    dtype: torch.dtype  # the attention's dtype: SDPA takes an additive mask only in the query's dtype

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(row["input_ids"]) for row in rows)
        shape = (len(rows), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        position_ids = torch.zeros(shape, dtype=torch.long)
        example = torch.full(shape, -1, dtype=torch.long)  # padding forms one more "example", so no row is empty
        for index, row in enumerate(rows):
            length = len(row["input_ids"])
            lengths = torch.tensor(row.get(SEQ_LENGTHS) or [length])
            input_ids[index, :length] = torch.tensor(row["input_ids"])
            labels[index, :length] = torch.tensor(row.get("labels", row["input_ids"]))
            position_ids[index, :length] = torch.cat([torch.arange(n) for n in lengths.tolist()])
            example[index, :length] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
        # An example's first token would be predicted from the end of the example before it.
        labels[position_ids == 0] = -100
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        visible = (example[:, :, None] == example[:, None, :]) & causal
        mask = torch.zeros((len(rows), 1, width, width), dtype=self.dtype)
        mask.masked_fill_(~visible[:, None], torch.finfo(self.dtype).min)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "attention_mask": mask,
                NUM_TOKENS: sum(len(row["input_ids"]) for row in rows)}
