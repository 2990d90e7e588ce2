"""Vector-quantised autoencoders: the paper's PQ-VAE with ONE codebook shared by all subspaces, and the
VQ-VAE baselines (one codebook over the whole latent, or product quantisation with a codebook per large
subspace).

MLP encoder -> latent of n*d -> n sub-vectors of dim d -> nearest codeword -> MLP decoder.
Training uses vector-quantize-pytorch's ``VectorQuantize`` (EMA codebook, k-means init, dead-code
restart, commitment loss); ``heads=n`` with ``separate_codebook_per_head=False`` is exactly the shared
codebook. Inference does its own nearest-codeword search on the library's codebook: one matmul, no
training-time bookkeeping, so batch and single-item encodes give the same symbols.
"""
from __future__ import annotations

import torch

from .base import Codec, mlp, mlp_numel, require_power_of_two


class _VQAutoencoder(Codec):
    shared_codebook: bool
    extra_params = ("hidden",)

    def __init__(self, dim: int, n: int = 8, d: int = 16, k: int = 16, hidden: int = 512, commitment: float = 0.25,
                 decay: float = 0.99, dead_code_threshold: float = 2.0):
        super().__init__(dim, n=n, d=d, k=k, hidden=hidden)  # checks n, d >= 1 and the sizes first
        require_power_of_two("codebook size K", k)
        from vector_quantize_pytorch import VectorQuantize

        self.encoder = mlp([dim, hidden, hidden, n * d])
        self.decoder = mlp([n * d, hidden, hidden, dim])
        self.vq = VectorQuantize(dim=n * d, codebook_size=k, codebook_dim=d, heads=n,
                                 separate_codebook_per_head=not self.shared_codebook, decay=decay,
                                 commitment_weight=commitment, kmeans_init=True, kmeans_iters=10,
                                 threshold_ema_dead_code=dead_code_threshold)

    @classmethod
    def symbol_shape(cls, dim, p):
        return p.get("n", 8), p.get("k", 16)

    @classmethod
    def state_numel(cls, dim, p):
        n, d, k, h = p.get("n", 8), p.get("d", 16), p.get("k", 16), p.get("hidden", 512)
        books = 1 if cls.shared_codebook else n
        # codebook: embed and embed_avg (books, K, d), cluster_size (books, K), the initted flag
        return mlp_numel([dim, h, h, n * d]) + mlp_numel([n * d, h, h, dim]) + books * k * (2 * d + 1) + 1

    @property
    def num_symbols(self):
        return self.params["n"]

    @property
    def alphabet(self):
        return self.params["k"]

    def forward(self, x):
        z = self.encoder(x)[:, None, :]  # (B, 1, n*d)
        q, _, loss = self.vq(z)
        return self.decoder(q[:, 0]), loss.sum()

    def codebooks(self) -> torch.Tensor:
        """(n or 1, K, d) codewords."""
        cb = self.vq._codebook.embed  # (1 or n, K, d)
        return cb

    def _encode(self, x, bf16=False):
        n, d = self.params["n"], self.params["d"]
        z = self._encoder(x, bf16).view(len(x), n, d)  # (B, n, d)
        cb = self.codebooks()
        if self.shared_codebook:
            c = cb[0]  # (K, d)
            flat = z.reshape(-1, d)
            dist = (c * c).sum(1)[None, :] - 2 * flat @ c.T  # ||z||^2 is constant per row
            return dist.argmin(1).view(len(x), n)
        dist = (cb * cb).sum(-1)[None] - 2 * torch.einsum("bnd,nkd->bnk", z, cb)
        return dist.argmin(-1)

    def _decode(self, s):
        n, d = self.params["n"], self.params["d"]
        cb = self.codebooks()
        if self.shared_codebook:
            q = cb[0][s]  # (B, n, d)
        else:
            q = cb[torch.arange(n)[None, :], s]  # (B, n, d)
        return self.decoder(q.reshape(len(s), n * d))


class PQVAE(_VQAutoencoder):
    """The paper's method: product quantisation with ONE codebook shared by all n subspaces."""

    family = "pqvae"
    spec_pattern = r"pqvae-n(?P<n>\d+)d(?P<d>\d+)k(?P<k>\d+)"
    spec_format = "pqvae-n{n}d{d}k{k}"
    shared_codebook = True


class VQVAE(_VQAutoencoder):
    """Baseline: a separate codebook per subspace (n=1: one codebook over the whole latent)."""

    family = "vqvae"
    spec_pattern = r"vqvae-n(?P<n>\d+)d(?P<d>\d+)k(?P<k>\d+)"
    spec_format = "vqvae-n{n}d{d}k{k}"
    shared_codebook = False
