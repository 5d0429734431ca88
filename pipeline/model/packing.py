"""The row plan of a packed micro-batch: which samples share a row, chosen by the compute it costs.

A packed batch is a [rows, length] tensor: every row is as long as the longest one, the shorter ones padded at
their end. Its cost has two parts. The linear layers cost the same per token, padding included: rows x length.
Attention depends on the implementation: flash-attention's varlen path computes each sample's own causal triangle
(the same whatever the rows), but sdpa and eager compute the whole [length x length] square of every row under the
block-diagonal mask, so on them a few long rows cost more than more, shorter rows of the same samples. How much more
is `attention_break_even`, the row length at which a row's attention costs as many FLOPs as its linear layers: about
32k tokens for Qwen2-7B (the term hardly matters), 1.4k for the CPU-sized Llama of benchmarks/packing.py (it is most
of the cost).

The plan: for each number of rows, from the fewest that hold the micro-batch within `max_tokens` up to the count at
which rows cannot get shorter (the longest sample's length), the shortest rows that number takes (MULTIFIT: first-fit
decreasing into the smallest capacity that needs no more rows). Among those that pad at most `PADDING_BOUND` of their
tokens (padding is activation memory as well as compute), the one with the fewest estimated FLOPs, rows x length x
(1 + length / break_even) (break_even None: the padded token count); when none is within the bound, the least padded.
Ties go to fewer rows. The plan is a deterministic function of the lengths, so a resumed run packs a micro-batch into
the same rows.
"""

from __future__ import annotations

from transformers import PretrainedConfig

PADDING_BOUND = 0.05  # the share of a packed batch's tokens that may be padding when a plan within it exists
PER_SAMPLE_ATTENTION = ("flash_attention",)  # implementations whose packed attention skips other samples' tokens


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bin packing of item lengths into bins of `capacity`: the indices in each bin, longest item first. Items are
    placed longest first into the first bin with room (an item longer than `capacity` gets a bin of its own);
    ties keep the input order, so the result is a deterministic function of the lengths."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, room in enumerate(free):
            if lengths[i] <= room:
                bins[b].append(i)
                free[b] -= lengths[i]
                break
        else:
            bins.append([i])
            free.append(capacity - lengths[i])
    return bins


def shortest_rows(lengths: list[int], rows: int, max_tokens: int) -> list[list[int]]:
    """At most `rows` rows, as short as first-fit decreasing gets them (MULTIFIT): the rows of the smallest capacity,
    found by bisection between the lower bound (the longest item, the mean row) and `max_tokens`, at which
    first-fit decreasing needs no more than `rows` rows. Callers ask for at least the rows needed at `max_tokens`."""
    low = max(max(lengths), -(-sum(lengths) // rows))
    high = max(max_tokens, max(lengths))
    while low < high:
        mid = (low + high) // 2
        if len(first_fit_decreasing(lengths, mid)) <= rows:
            high = mid
        else:
            low = mid + 1
    return first_fit_decreasing(lengths, high)


def plan_rows(lengths: list[int], max_tokens: int, break_even: float | None = None) -> list[list[int]]:
    """The rows (sample indices, longest first) of a packed micro-batch; see the module docstring."""
    total, longest = sum(lengths), max(lengths)
    fewest = len(first_fit_decreasing(lengths, max(max_tokens, longest)))
    plans: list[tuple[float, float, list[list[int]]]] = []
    for count in range(fewest, len(lengths) + 1):
        rows = shortest_rows(lengths, count, max_tokens)
        length = max(sum(lengths[i] for i in row) for row in rows)
        padded = len(rows) * length
        cost = padded * (1 + length / break_even) if break_even else padded
        plans.append((1 - total / padded, cost, rows))
        if length == longest:  # rows cannot get shorter: more rows would only add padding
            break
    within = [plan for plan in plans if plan[0] <= PADDING_BOUND]
    # min keeps the first of equals: fewer rows
    return min(within, key=lambda plan: plan[1])[2] if within else min(plans, key=lambda plan: plan[0])[2]


def attention_break_even(config: PretrainedConfig) -> float | None:
    """The row length at which a packed row's attention costs as many FLOPs as its linear layers, for a causal LM's
    config (Llama-style: gated MLP, grouped-query attention); None where the attention implementation computes each
    sample's tokens only (flash-attention's varlen path), so the row plan does not change its cost.

    Per token and layer the projections and the MLP take 2 x (2 d (h + kv) hd + 3 d ffn) FLOPs; per (query, key)
    pair, scores and weighted values take 4 h hd."""
    implementation = str(getattr(config, "_attn_implementation", None) or "sdpa")
    if implementation.startswith(PER_SAMPLE_ATTENTION):
        return None
    text = config.get_text_config()
    width, heads = text.hidden_size, text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or width // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    mlp = getattr(text, "intermediate_size", None) or 4 * width
    linear = 2 * (2 * width * (heads + kv_heads) * head_dim + 3 * width * mlp)
    return linear / (4 * heads * head_dim)
