"""Captions from a (decoded) CLIP image embedding: ClipCap (Mokady et al. 2021) with an MLP mapping network.

The mapping network turns one embedding into ``prefix_length`` GPT-2 input embeddings; GPT-2 continues
from them (greedy or beam search, via transformers' ``generate(inputs_embeds=...)``).

Two shapes of the same model:

* the embedded captioner (``weights/heads/semcomp-tiny-clipcap``): a small GPT-2 trained here with the real
  GPT-2 tokenizer but a *compact vocabulary* (only the tokens its training captions use), so the weights
  stay a few MB; ``vocab_ids`` maps compact ids to GPT-2 ids for decoding;
* the public ClipCap COCO checkpoint (ViT-B/32, MLP, prefix 10, full GPT-2): ``semcomp convert-clipcap``
  turns it into the same folder layout (full vocabulary, no ``vocab_ids``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import config_from_dict, file_sha256


class CaptionError(ValueError):
    """Wrong embedding width / space, or unusable captioner weights."""


def check_caption_embeddings(embeds, dim: int, trained_on: str, backbone: str | None = None) -> torch.Tensor:
    """(N, dim) float32 from (dim,) or (N, dim); a CaptionError for another shape or another backbone's space."""
    embeds = torch.as_tensor(embeds, dtype=torch.float32)
    if embeds.ndim == 1:
        embeds = embeds[None]
    if embeds.ndim != 2 or embeds.shape[1] != dim:
        raise CaptionError(f"captioner expects {dim}-d embeddings, got shape {tuple(embeds.shape)}")
    if backbone is not None and backbone != trained_on:
        raise CaptionError(f"captioner was trained on {trained_on!r} embeddings; these come from {backbone!r}")
    return embeds


@dataclass
class CaptionConfig:
    embed_dim: int = 512
    prefix_length: int = 10
    n_embd: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_positions: int = 64
    vocab_size: int = 50257  # compact vocabulary size (eos included) or GPT-2's 50257
    eos_id: int = 50256  # in the model's own id space
    mapping_hidden: int | None = None  # ClipCap's MLP: embed -> (n_embd*prefix)//2 -> n_embd*prefix
    normalize_input: bool = True  # L2-normalise the embedding first (decoded features are not unit-norm)
    input_scale: float = 1.0  # then multiply: ClipCap's public weights were trained on unnormalised CLIP features
    backbone: str = "semcomp-tiny-clip"

    @classmethod
    def from_dict(cls, d: dict) -> "CaptionConfig":
        return config_from_dict(cls, d)


class ClipCapModel(nn.Module):
    def __init__(self, cfg: CaptionConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.cfg = cfg
        hidden = cfg.mapping_hidden or (cfg.n_embd * cfg.prefix_length) // 2
        self.clip_project = nn.Sequential(nn.Linear(cfg.embed_dim, hidden), nn.Tanh(),
                                          nn.Linear(hidden, cfg.n_embd * cfg.prefix_length))
        gcfg = GPT2Config(vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
                          n_head=cfg.n_head, bos_token_id=cfg.eos_id, eos_token_id=cfg.eos_id, pad_token_id=cfg.eos_id)
        self.gpt = GPT2LMHeadModel(gcfg)

    def prefix(self, embeds: torch.Tensor) -> torch.Tensor:
        if self.cfg.normalize_input:
            embeds = F.normalize(embeds.float(), dim=-1) * self.cfg.input_scale
        return self.clip_project(embeds).view(-1, self.cfg.prefix_length, self.cfg.n_embd)

    def forward(self, embeds: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over caption tokens. tokens (B, T) incl. the final eos, mask (B, T) 1 = real."""
        p = self.prefix(embeds)
        x = torch.cat([p, self.gpt.transformer.wte(tokens)], dim=1)
        att = torch.cat([torch.ones(p.shape[:2], dtype=mask.dtype, device=mask.device), mask], dim=1)
        labels = torch.cat([torch.full(p.shape[:2], -100, dtype=tokens.dtype, device=tokens.device),
                            tokens.masked_fill(mask == 0, -100)], dim=1)
        return self.gpt(inputs_embeds=x, attention_mask=att, labels=labels).loss


class Captioner:
    """Caption head: ``caption(embeds) -> list[str]``."""

    WEIGHTS = "model.safetensors"

    def __init__(self, model: ClipCapModel, tokenizer, vocab_ids: torch.Tensor | None = None):
        self.model = model.eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        self.vocab_ids = vocab_ids  # compact id -> GPT-2 id (None: the model uses GPT-2 ids)
        self._to_compact = None
        if vocab_ids is not None:
            self._to_compact = {int(g): i for i, g in enumerate(vocab_ids.tolist())}

    # ---- token ids
    def encode_text(self, text: str) -> list[int] | None:
        """GPT-2 BPE ids in the model's id space plus eos; None if a token is outside the compact vocabulary."""
        ids = self.tokenizer(text)["input_ids"]
        if self._to_compact is not None:
            if any(i not in self._to_compact for i in ids):
                return None
            ids = [self._to_compact[i] for i in ids]
        return ids + [self.cfg.eos_id]

    def decode_ids(self, ids: list[int]) -> str:
        ids = [i for i in ids if i != self.cfg.eos_id]
        if self.vocab_ids is not None:
            ids = [int(self.vocab_ids[i]) for i in ids]
        return self.tokenizer.decode(ids).strip()

    # ---- io
    @staticmethod
    def load_tokenizer(path: str | Path):
        from transformers import GPT2TokenizerFast

        path = Path(path)
        # transformers 5 silently ignores the old vocab_file/merges_file names: pass vocab/merges.
        return GPT2TokenizerFast(vocab=str(path / "vocab.json"), merges=str(path / "merges.txt"))

    @classmethod
    def from_pretrained(cls, path: str | Path, verify: bool = True, backbone=None) -> "Captioner":
        """``backbone`` (a name or a loaded backbone): refuse, with a CaptionError, a head trained for other weights
        of that backbone (the card's ``backbone_sha256``)."""
        from safetensors.torch import load_file

        from ..backbone import check_trained_for
        from ..weights import read_verified_card

        path = Path(path)
        w = path / cls.WEIGHTS
        card = read_verified_card(path, cls.WEIGHTS, CaptionError, verify)
        cfg = CaptionConfig.from_dict(json.loads((path / "config.json").read_text()))
        check_trained_for(card, cfg.backbone, backbone, f"captioner {path}", CaptionError,
                          f"semcomp train-caption --backbone {cfg.backbone}")
        sd = load_file(str(w))
        vocab_ids = sd.pop("vocab_ids", None)
        model = ClipCapModel(cfg)
        sd = {k: v.float() for k, v in sd.items()}
        if "gpt.lm_head.weight" not in sd:  # tied to the input embedding
            sd["gpt.lm_head.weight"] = sd["gpt.transformer.wte.weight"]
        try:
            model.load_state_dict(sd, strict=False)
        except RuntimeError as e:
            raise CaptionError(f"weights file {w} does not fit its config: {e}") from e
        return cls(model, cls.load_tokenizer(path / "tokenizer"), vocab_ids)

    def save_pretrained(self, path: str | Path, card: dict | None = None, tokenizer_dir: str | Path | None = None) -> Path:
        import shutil

        from safetensors.torch import save_file

        path = Path(path)
        (path / "tokenizer").mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().half().contiguous() for k, v in self.model.state_dict().items()
              if k not in ("gpt.lm_head.weight",) and not k.endswith(".attn.bias") and not k.endswith(".attn.masked_bias")}
        if self.vocab_ids is not None:
            sd["vocab_ids"] = self.vocab_ids.to(torch.int64).contiguous()
        save_file(sd, str(path / self.WEIGHTS))
        (path / "config.json").write_text(json.dumps(asdict(self.cfg), indent=2))
        if tokenizer_dir is not None:
            for f in ("vocab.json", "merges.txt"):
                shutil.copy(Path(tokenizer_dir) / f, path / "tokenizer" / f)
        card = dict(card or {})
        card["sha256"] = file_sha256(path / self.WEIGHTS)
        (path / "card.json").write_text(json.dumps(card, indent=2))
        return path

    # ---- captioning
    def check(self, embeds, backbone: str | None = None) -> torch.Tensor:
        return check_caption_embeddings(embeds, self.cfg.embed_dim, self.cfg.backbone, backbone)

    @torch.inference_mode()
    def caption(self, embeds, beam: int = 1, max_tokens: int = 24, backbone: str | None = None) -> list[str]:
        """Greedy (beam=1) or beam-search captions, one per embedding; deterministic."""
        embeds = self.check(embeds, backbone)
        p = self.model.prefix(embeds)
        att = torch.ones(p.shape[:2], dtype=torch.long)
        out = self.model.gpt.generate(inputs_embeds=p, attention_mask=att, max_new_tokens=max_tokens, num_beams=beam,
                                      do_sample=False, eos_token_id=self.cfg.eos_id, pad_token_id=self.cfg.eos_id)
        caps = []
        for row in out.tolist():
            if self.cfg.eos_id in row:
                row = row[: row.index(self.cfg.eos_id)]
            caps.append(self.decode_ids(row))
        return caps


def convert_clipcap(checkpoint: str | Path, out_dir: str | Path, tokenizer_dir: str | Path, n_head: int = 12,
                    input_scale: float = 1.0, backbone: str = "ViT-B-32/openai") -> Path:
    """The public ClipCap checkpoint (MLP mapping, e.g. ``coco_prefix-009.pt``) -> a semcomp captioner folder.

    Loaded with ``torch.load(weights_only=True)``: tensors only, nothing is unpickled. Sizes are read from
    the tensors (the checkpoint carries no config); ``n_head`` cannot be, GPT-2 small has 12.
    """
    path = Path(checkpoint)
    if not path.exists():
        raise CaptionError(f"ClipCap checkpoint not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses anything that is not plain tensors/containers
        raise CaptionError(f"{path} is not a plain ClipCap state dict: {e}") from e
    if "clip_project.model.0.weight" not in sd or "gpt.transformer.wte.weight" not in sd:
        raise CaptionError(f"{path} is not a ClipCap MLP checkpoint (expected clip_project.model.* and gpt.* tensors)")
    vocab, n_embd = sd["gpt.transformer.wte.weight"].shape
    hidden, embed_dim = sd["clip_project.model.0.weight"].shape
    prefix = sd["clip_project.model.2.weight"].shape[0] // n_embd
    n_layer = len({k.split(".")[3] for k in sd if k.startswith("gpt.transformer.h.")})
    cfg = CaptionConfig(embed_dim=embed_dim, prefix_length=prefix, n_embd=n_embd, n_layer=n_layer, n_head=n_head,
                        n_positions=sd["gpt.transformer.wpe.weight"].shape[0], vocab_size=vocab, eos_id=vocab - 1,
                        mapping_hidden=hidden, input_scale=input_scale, backbone=backbone)
    model = ClipCapModel(cfg)
    mapped = {k.replace("clip_project.model.", "clip_project."): v for k, v in sd.items()
              if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    mapped.setdefault("gpt.lm_head.weight", mapped["gpt.transformer.wte.weight"])
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or [m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias"))]:
        raise CaptionError(f"checkpoint does not fit GPT-2/ClipCap: missing {missing[:5]}, unexpected {unexpected[:5]}")
    card = {"kind": "caption", "converted_from": str(path), "source": "ClipCap (Mokady et al. 2021), MLP mapping"}
    return Captioner(model, Captioner.load_tokenizer(tokenizer_dir)).save_pretrained(out_dir, card, tokenizer_dir=tokenizer_dir)
