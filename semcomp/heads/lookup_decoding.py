"""Greedy decoding with prompt-lookup drafts, for a causal LM whose input starts with soft (embedding) tokens.

Batch-1 decoding of a 135 M-parameter LM on a CPU is memory-bound: a forward pass over 8 new tokens costs about
what one token costs. The captioner's prompt holds the retrieved sentence ("... a photo of a tabby. This image
shows") and its captions often copy stretches of it, so the tokens that followed the last generated n-gram in
the context are proposed as a draft and checked in one pass (prompt-lookup decoding, Saxena 2023; the
verification is that of speculative decoding, Leviathan et al. 2023). Every emitted token is the greedy choice
given the tokens before it: the output is greedy decoding's, up to float rounding (a pass over several tokens
sums in another order than one over one token). A first guess at the whole caption (the retrieved sentence)
can ride along in the prompt's own pass, so a caption that copies it costs one pass in all.

Written here because transformers' prompt-lookup path needs ``input_ids`` for the whole context, and this
context starts with mapper-made prefix embeddings that have no ids.
"""
from __future__ import annotations

import inspect

import torch


def banned_by_no_repeat(tokens: list[int], n: int) -> set[int]:
    """Tokens that would repeat an n-gram of ``tokens`` (transformers' ``no_repeat_ngram_size`` rule)."""
    if n <= 0 or len(tokens) < n - 1:
        return set()
    if n == 1:
        return set(tokens)
    tail = tuple(tokens[len(tokens) - n + 1 :])
    return {tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tuple(tokens[i : i + n - 1]) == tail}


def pick(logits: torch.Tensor, tokens: list[int], no_repeat_ngram: int) -> int:
    """Greedy choice from (V,) logits, with the no-repeat-n-gram ban over ``tokens``."""
    banned = banned_by_no_repeat(tokens, no_repeat_ngram)
    if banned:
        logits = logits.clone()
        logits[list(banned)] = float("-inf")
    return int(logits.argmax())


def lookup_draft(context: list[int], tokens: list[int], max_len: int, max_ngram: int = 3,
                 ends: frozenset[int] = frozenset()) -> list[int]:
    """The tokens that followed the latest ``n``-gram of ``tokens`` (longest n first) where it occurs in
    ``context`` + the earlier ``tokens``, up to ``max_len`` and up to and including the first token in ``ends``
    (a sentence end: what follows it in the prompt is rarely what the caption says next); [] when it occurs nowhere."""
    seq = context + tokens
    for n in range(min(max_ngram, len(tokens)), 0, -1):
        tail = seq[-n:]
        for i in range(len(seq) - n):  # the first occurrence, never the tail itself
            if seq[i : i + n] == tail:
                draft = seq[i + n : i + n + max_len]
                cut = next((j + 1 for j, t in enumerate(draft) if t in ends), len(draft))
                return draft[:cut]
    return []


def _cache_kwarg(lm) -> str:
    """The forward keyword for the KV cache: ``cache`` in newer transformers 5.x, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _cache_of(out):
    """The KV cache an LM output returns: ``cache`` in newer transformers 5.x, ``past_key_values`` before."""
    return out.cache if "cache" in getattr(out, "keys", lambda: [])() else out.past_key_values


def _accept(step_logits: torch.Tensor, draft: list[int], tokens: list[int], no_repeat_ngram: int, eos_id: int,
            max_new_tokens: int) -> tuple[int, bool]:
    """Append to ``tokens`` the longest prefix of ``draft`` that greedy decoding would have chosen
    (``step_logits[j]`` are the logits that choose draft position j). Returns (accepted, finished)."""
    for j, d in enumerate(draft):
        if pick(step_logits[j], tokens, no_repeat_ngram) != d:
            return j, False
        tokens.append(d)
        if d == eos_id or len(tokens) >= max_new_tokens:
            return j + 1, True
    return len(draft), False


@torch.inference_mode()
def greedy_with_lookup(lm, inputs_embeds: torch.Tensor, context_ids: list[int], max_new_tokens: int, eos_id: int,
                       no_repeat_ngram: int = 3, draft_len: int = 8,
                       draft_ends: frozenset[int] = frozenset(),
                       first_draft: list[int] | tuple[int, ...] = ()) -> tuple[list[int], int]:
    """Greedy tokens (ending with eos if it came) for ONE item (``inputs_embeds`` (1, T, W), no padding), and the
    number of LM forward passes it took. ``context_ids``: the token ids the drafts are looked up in (the prompt);
    ``draft_ends``: tokens a draft stops after (see :func:`lookup_draft`); ``first_draft``: a guess at the whole
    caption (e.g. the retrieved sentence and eos), checked in the prompt's own pass, so a caption that copies it
    costs one pass instead of two."""
    if inputs_embeds.ndim != 3 or inputs_embeds.shape[0] != 1:
        raise ValueError(f"greedy_with_lookup decodes one item: inputs_embeds must be (1, T, W), got {tuple(inputs_embeds.shape)}")
    kv = _cache_kwarg(lm)
    emb = lm.get_input_embeddings()
    start = inputs_embeds.shape[1]
    draft = list(first_draft)[:max_new_tokens]
    feed = torch.cat([inputs_embeds, emb(torch.tensor([draft])).to(inputs_embeds.dtype)], 1) if draft else inputs_embeds
    out = lm(inputs_embeds=feed, use_cache=True, logits_to_keep=len(draft) + 1)  # the prompt's last logits on
    cache, step_logits, passes = _cache_of(out), out.logits[0], 1
    tokens: list[int] = []
    while True:
        # here every token in ``tokens`` and the whole draft are in the cache; step_logits[j] choose draft position j
        accepted, done = _accept(step_logits, draft, tokens, no_repeat_ngram, eos_id, max_new_tokens)
        if done:
            return tokens, passes
        if accepted < len(draft):  # forget the rejected draft positions (a negative crop: remove that many)
            cache.crop(start + len(tokens) - cache.get_seq_length())
        tokens.append(pick(step_logits[accepted], tokens, no_repeat_ngram))
        if tokens[-1] == eos_id or len(tokens) >= max_new_tokens:
            return tokens, passes
        draft = lookup_draft(context_ids, tokens, min(draft_len, max_new_tokens - len(tokens)), ends=draft_ends)
        out = lm(inputs_embeds=emb(torch.tensor([[tokens[-1]] + draft])).to(inputs_embeds.dtype), use_cache=True,
                 **{kv: cache})
        cache, step_logits, passes = _cache_of(out), out.logits[0], passes + 1
