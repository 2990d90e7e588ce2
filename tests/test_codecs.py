import numpy as np
import pytest
import torch

from semcomp import CodecError, create_codec, load_codec
from semcomp.codecs import CODECS, fixed_bits
from semcomp.training.codec import cosine_loss, train_codec

from conftest import SMALL_SPECS, small_kwargs


@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_symbols_shape_range_and_budget(spec, synthetic):
    x, _, _ = synthetic
    codec = create_codec(spec, x.shape[1], **small_kwargs(spec))
    s = codec.encode(x)
    assert s.shape == (len(x), codec.num_symbols) and s.dtype == torch.int64
    assert 0 <= int(s.min()) and int(s.max()) < codec.alphabet
    assert codec.bits == fixed_bits(codec.num_symbols, codec.alphabet)
    # raw coding spends exactly the fixed budget
    payload = codec.entropy_coder.encode(s.numpy(), "raw")
    assert len(payload) == (len(x) * codec.bits + 7) // 8
    # decode is deterministic and encode(batch) == encode(one by one)
    assert torch.equal(codec.decode(s), codec.decode(s))
    assert torch.equal(torch.cat([codec.encode(x[i : i + 1]) for i in range(7)]), s[:7])


def test_spec_strings_round_trip():
    for spec in SMALL_SPECS + ["pqvae-n200d16k8", "aesq-c200l8"]:
        c = create_codec(spec, 32, **small_kwargs(spec))
        assert c.spec == spec
    assert create_codec("pqvae-n200d16k8", 768).bits == 600
    assert create_codec("pqvae-n100d32k64", 768).bits == 600
    assert create_codec("pqvae-n50d64k4096", 768).bits == 600
    assert create_codec("aesq-c200l8", 768).bits == 600


@pytest.mark.parametrize("bad", ["nope-x1", "pqvae-n4d4", "pqvae-n4d4k6", "fsq-c8l3", "dsq-b9"])
def test_bad_specs_are_refused(bad):
    with pytest.raises(CodecError):
        create_codec(bad, 32)


def test_wrong_dimension_and_bad_input_are_refused(synthetic):
    x, _, _ = synthetic
    codec = create_codec("pqvae-n4d4k8", x.shape[1], hidden=48)
    with pytest.raises(CodecError, match=r"expects features of shape \(N, 32\)"):
        codec.encode(torch.randn(3, 31))
    with pytest.raises(CodecError):
        codec.encode(torch.full((2, 32), float("nan")))
    # one bad number among many, in every float type a caller may hand over (numpy's check covers three of them)
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for bad in (float("nan"), float("inf"), -float("inf")):
            y = torch.randn(300, 32).to(dtype)
            y[173, 29] = bad
            with pytest.raises(CodecError, match="NaN or Inf"):
                codec.encode(y)
            with pytest.raises(CodecError, match="NaN or Inf"):
                codec.encode(y.T.contiguous().T)  # not contiguous
        assert codec.encode(torch.randn(3, 32, requires_grad=True).to(dtype)).shape[0] == 3
    with pytest.raises(CodecError):
        codec.decode(torch.full((2, 4), 8))  # symbol out of range for K=8
    with pytest.raises(CodecError):
        codec.decode(torch.zeros(2, 5, dtype=torch.long))


@pytest.mark.parametrize("spec", SMALL_SPECS)
def test_training_lowers_loss_and_save_load_is_exact(spec, synthetic, tmp_path):
    x, _, _ = synthetic
    codec, card = train_codec(spec, x, epochs=4, batch_size=64, lr=3e-3, codec_kwargs=small_kwargs(spec), progress=False)
    hist = card["history"]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    codec.save_pretrained(tmp_path / spec, card)
    loaded = load_codec(tmp_path / spec)
    assert loaded.spec == spec
    assert torch.equal(loaded.encode(x), codec.encode(x))
    assert torch.allclose(loaded.decode(codec.encode(x)), codec.decode(codec.encode(x)))
    assert loaded.weights_hash == codec.weights_hash


def test_more_bits_give_higher_cosine(synthetic):
    x, _, _ = synthetic
    cos = []
    for spec in ["pqvae-n2d8k4", "pqvae-n8d4k16"]:  # 4 bits vs 32 bits
        codec, card = train_codec(spec, x, epochs=8, batch_size=64, lr=3e-3, codec_kwargs={"hidden": 64}, progress=False)
        cos.append(card["holdout_cosine"])
    assert cos[1] > cos[0] + 0.02
    dsq = []
    for b in (1, 3):
        codec, card = train_codec(f"dsq-b{b}", x, epochs=3, batch_size=64, lr=1e-2, progress=False)
        dsq.append(card["holdout_cosine"])
    assert dsq[1] > dsq[0]


def test_pqvae_uses_one_shared_codebook():
    c = create_codec("pqvae-n8d4k16", 32, hidden=32)
    assert c.codebooks().shape == (1, 16, 4)
    v = create_codec("vqvae-n8d4k16", 32, hidden=32)
    assert v.codebooks().shape == (8, 16, 4)


def test_altered_weights_are_refused(synthetic, tmp_path):
    x, _, _ = synthetic
    codec = create_codec("fsq-c8l4", x.shape[1], hidden=32)
    codec.save_pretrained(tmp_path / "c")
    w = tmp_path / "c" / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 1
    w.write_bytes(bytes(data))
    with pytest.raises(CodecError, match="sha256"):
        load_codec(tmp_path / "c")
    w.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(CodecError):
        load_codec(tmp_path / "c", verify=False)


def test_registry_lists_every_family():
    assert set(CODECS) == {"dsq", "fsq", "vqvae", "pqvae", "aesq", "prq"}
    assert cosine_loss(torch.ones(2, 3), torch.ones(2, 3)).abs() < 1e-6


@pytest.mark.parametrize("spec", ["pqvae-n4d4k8", "fsq-c8l4", "aesq-c8l4", "vqvae-n2d8k16", "dsq-b1"])
def test_property_symbols_round_trip_and_bits_add_up(spec, synthetic):
    """Hypothesis: any batch size and coder -> decompressed symbols equal the encoded ones; raw payload = exact bits."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from semcomp.bitstream import unpack
    from semcomp.training.codec import train_codec

    x, _, _ = synthetic
    codec, _ = train_codec(spec, x, epochs=1, batch_size=64, codec_kwargs={} if spec.startswith("dsq") else {"hidden": 32}, progress=False)
    codec.backbone = "synthetic"

    @settings(max_examples=25, deadline=None)
    @given(n=st.integers(1, 40), start=st.integers(0, 100), coder=st.sampled_from(["raw", "huffman", "ans", "auto"]))
    def check(n, start, coder):
        xb = x[start : start + n]
        sym = codec.encode(xb).numpy()
        blob = codec.compress(xb, coder)
        assert (codec.decompress_symbols(blob) == sym).all()
        _, payload = unpack(codec.compress(xb, "raw"))
        assert len(payload) == (len(xb) * codec.bits + 7) // 8
        assert (codec.encode(xb[:1]).numpy() == sym[:1]).all()  # batch and single item agree

    check()


def test_bf16_encode_same_format_nearly_same_symbols(synthetic):
    from semcomp.codecs import CodecError, create_codec

    x, _, _ = synthetic
    torch.manual_seed(0)
    c = create_codec("pqvae-n4d4k8", x.shape[1], hidden=48).eval()
    c.fit_entropy_model(x)
    s32, s16 = c.encode(x), c.encode(x, precision="bf16")
    assert s16.shape == s32.shape and s16.dtype == s32.dtype
    assert (s16 == s32).float().mean() > 0.9  # near-ties may flip, nothing more
    blob = c.compress(x[:5], "ans", precision="bf16")
    assert torch.equal(c.decompress(blob), c.decode(c.encode(x[:5], "bf16")))
    with pytest.raises(CodecError, match="precision"):
        c.encode(x, precision="fp8")
