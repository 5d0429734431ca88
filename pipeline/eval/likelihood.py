"""The log-likelihood of a continuation given a benchmark item's prompt and media: what multiple-choice and
perplexity-style evaluations score (lmms-eval's `loglikelihood` requests).

The prompt is exactly the one generation sees (`build_sample`, the chat template's generation prompt); the continuation
follows it directly and is tokenized together with it (`AVProcessor.encode` labels its tokens). Rows are left-padded as
in generation, with position ids counted from each row's first real token, so a row's numbers do not depend on its
batch; the continuation ends every row, so only the last positions' logits are computed.
"""

from __future__ import annotations

from typing import Any

import torch
from tqdm import tqdm

from pipeline.eval.bench import CONDITIONS, Item
from pipeline.eval.generate import build_sample, rank_batches
from pipeline.model.avllm import AVLLM
from pipeline.model.processor import IGNORE_INDEX


@torch.no_grad()
def continuation_logprobs(
    model: AVLLM, items: list[Item], continuations: list[str], batch_size: int, desc: str = "loglikelihood"
) -> list[tuple[float, bool]]:
    """Per item: (Σ log p(continuation token | prompt, media, earlier continuation tokens), whether every continuation
    token is the argmax, i.e. greedy decoding would produce the continuation)."""
    processor = model.build_processor()
    device = next(model.parameters()).device
    out: list[tuple[float, bool]] = []
    for batch in tqdm(rank_batches(len(items), batch_size, 0, 1), desc=desc):
        encoded = [
            processor.encode(build_sample(items[i], model.config.num_frames, CONDITIONS["complete"]), continuations[i])
            for i in batch
        ]
        batch_inputs = processor.collate(encoded, padding_side="left")
        labels = batch_inputs.pop("labels")
        assert labels is not None
        inputs: dict[str, Any] = {k: v.to(device) for k, v in batch_inputs.items() if v is not None}
        mask = inputs["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        keep = int((labels != IGNORE_INDEX).sum(-1).max()) + 1  # the logit before each continuation token
        logits = model(**inputs, position_ids=positions, logits_to_keep=keep).logits[:, :-1].float().cpu()
        targets = labels[:, -(keep - 1) :]
        scored = targets != IGNORE_INDEX
        logprobs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        greedy = (logits.argmax(-1) == targets) | ~scored
        out += [(float(logprobs[r][scored[r]].sum()), bool(greedy[r].all())) for r in range(len(batch))]
    return out
