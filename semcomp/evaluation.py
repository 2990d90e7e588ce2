"""Rate and semantic-fidelity measurements of a codec on a feature set (``semcomp eval``)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .bitstream import unpack
from .codecs import Codec
from .entropy import empirical_entropy_bits
from .heads.zeroshot import ZeroShotClassifier


def embedding_spread(feats) -> dict:
    """Mean pairwise cosine and the number of principal directions holding 90 % of the variance.

    Reported beside every rate–accuracy table: a collapsed embedding makes compression look free."""
    f = F.normalize(torch.as_tensor(feats, dtype=torch.float32), dim=-1)
    n = min(len(f), 4000)
    g = f[:n] @ f[:n].T
    mean_cos = float((g.sum() - n) / max(1, n * (n - 1)))
    s = torch.linalg.svdvals(f - f.mean(0))
    var = s**2 / (s**2).sum()
    return {"mean_pairwise_cosine": mean_cos, "pca_dirs_90pct_var": int((var.cumsum(0) < 0.9).sum()) + 1}


def evaluate_codec(codec: Codec, feats: np.ndarray, labels: np.ndarray | None = None,
                   classifier: ZeroShotClassifier | None = None, coders=("ans", "huffman"),
                   huffman_items: int = 500) -> dict:
    """Bits (fixed, entropy, coded), mean cosine and, with a classifier, zero-shot accuracy of float vs decoded."""
    x = F.normalize(torch.as_tensor(feats, dtype=torch.float32), dim=-1)
    symbols = codec.encode(x)
    x_hat = codec.decode(symbols)
    n = len(x)
    s_np = symbols.numpy()
    out = {
        "codec": codec.spec, "family": codec.family, "items": n, "dim": codec.dim,
        "fixed_bits": codec.bits, "bits_per_dim": codec.bits / codec.dim,
        "empirical_entropy_bits": empirical_entropy_bits(s_np, codec.alphabet) / n,
        "model_cross_entropy_bits": codec.symbol_model.ideal_bits(s_np) / n,
        "mean_cosine": float(F.cosine_similarity(x, x_hat, dim=-1).mean()),
        "codebook_utilisation": float(len(np.unique(s_np)) / codec.alphabet),
    }
    for coder in coders:
        m = min(n, huffman_items) if coder == "huffman" else n
        blob = codec.compress(x[:m], coder)
        _, payload = unpack(blob)  # the payload inside the file: no second entropy-coding pass
        out[f"{coder}_bits_per_item"] = 8 * len(payload) / m  # entropy-coded payload
        out[f"{coder}_file_bits_per_item"] = 8 * len(blob) / m  # whole .scf incl. header and CRC
        if not (codec.decompress_symbols(blob) == s_np[:m]).all():
            raise RuntimeError(f"{coder} round trip failed for {codec.spec}")
    if classifier is not None and labels is not None:
        f = classifier.accuracy(x, labels)
        d = classifier.accuracy(x_hat, labels)
        out.update({"float_top1": f["top1"], "float_top5": f["top5"], "top1": d["top1"], "top5": d["top5"],
                    "top1_retained": d["top1"] / f["top1"] if f["top1"] > 0 else float("nan")})
        if classifier.dim == codec.dim:
            # The seed sends the user's text through the same codec: class text features compressed too.
            t_hat = codec.reconstruct(classifier.text_features)
            both = ZeroShotClassifier(t_hat, classifier.class_names, classifier.logit_scale)
            out["top1_text_compressed_too"] = both.accuracy(x_hat, labels)["top1"]
            # how much text features suffer under a codec trained on image features only
            out["text_mean_cosine"] = float(F.cosine_similarity(classifier.text_features, t_hat, dim=-1).mean())
    return out
