"""The peers report on synthetic features: its shape, never its numbers."""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.peers import run  # noqa: E402
from conftest import clustered_features  # noqa: E402
from semcomp.training.codec import train_codec  # noqa: E402


def test_peers_report_shape():
    x, y, centres = clustered_features(n_classes=10, per_class=40, dim=32)
    test = (y % 5 == 0).numpy()
    keep = np.unique(y.numpy()[test])
    remap = {c: i for i, c in enumerate(keep)}
    codec, _ = train_codec("pqvae-n4d4k16", x[~test], epochs=1, batch_size=64, codec_kwargs={"hidden": 32}, progress=False)
    rows, fl = run(x.numpy()[~test], x.numpy()[test], np.asarray([remap[int(v)] for v in y.numpy()[test]]),
                   centres.numpy()[keep], [codec], quick=True)
    methods = {r["method"] for r in rows}
    assert {"faiss PQ", "faiss OPQ+PQ", "faiss RQ", "faiss SQ int4", "sign-binary", "semcomp pqvae"} <= methods
    for r in rows:
        assert r["bits"] > 0 and 0 <= r["top1"] <= r["top5"] <= 1 and -1 <= r["mean_cosine"] <= 1
        assert "top1_text_compressed_too" in r
    assert next(r for r in rows if r["method"] == "semcomp pqvae")["bits"] == 16
    assert next(r for r in rows if r["spec"] == "PQ4x4")["bits"] == 16
    assert 0 <= fl["top1"] <= 1
