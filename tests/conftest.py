import numpy as np
import pytest
import torch
import torch.nn.functional as F


def clustered_features(n_classes=16, per_class=40, dim=32, noise=0.35, seed=0):
    """Synthetic 'CLIP-like' features: unit vectors scattered around class centres (the centres play the
    class text features)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(n_classes, dim, generator=g), dim=-1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = F.normalize(centres[labels] + noise * torch.randn(len(labels), dim, generator=g) / dim**0.5 * 3, dim=-1)
    return x, labels, centres


@pytest.fixture(scope="session")
def synthetic():
    torch.manual_seed(0)
    return clustered_features()


SMALL_SPECS = ["dsq-b2", "fsq-c8l4", "aesq-c8l4", "pqvae-n4d4k8", "vqvae-n2d8k16", "vqvae-n1d8k64"]


def small_kwargs(spec):
    return {} if spec.startswith("dsq") else {"hidden": 48}
