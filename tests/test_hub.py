"""Codecs on the Hugging Face Hub (issue 22), offline only: a Hub cache laid out in a tmp HF_HOME exactly as
huggingface_hub writes it (blobs, snapshots/<commit> symlinks, refs/<branch or tag>), HF_HUB_OFFLINE=1 and
sockets refused, so nothing here can touch the network."""
from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
import torch

from semcomp.codecs import Codec, CodecError, create_codec, load_codec
from semcomp.codecs.fsq import FSQCodec
from semcomp.hub import CODEC_FILES, parse_repo_id

torch.set_num_threads(1)
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hub cache in tmp, offline mode on (env and the already-imported constants), no sockets."""
    import huggingface_hub.constants as C

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)

    def refuse(*a, **k):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return cache


def fill_cache(cache: Path, repo: str, folder: Path, commit: str = COMMIT, refs=("main",)) -> Path:
    """Lay out ``folder``'s files as huggingface_hub caches a snapshot of ``repo`` at ``commit``."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True, exist_ok=True)
    for name in CODEC_FILES:
        if (folder / name).exists():
            data = (folder / name).read_bytes()
            blob = root / "blobs" / hashlib.sha256(data).hexdigest()
            blob.write_bytes(data)
            (snap / name).symlink_to(Path("../..") / "blobs" / blob.name)
    (root / "refs").mkdir(exist_ok=True)
    for r in refs:
        (root / "refs" / r).write_text(commit)
    return snap


@pytest.fixture
def saved(tmp_path):
    x = torch.nn.functional.normalize(torch.randn(64, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    codec = create_codec("fsq-c8l4", 16, hidden=16)
    codec.round_to_storage_precision()  # as training does: the saved fp16 weights encode exactly like this codec
    codec.fit_entropy_model(x)
    codec.backbone = "ViT-B-32/openai"
    codec.preprocessing = {"image_size": 224, "resize": "shortest", "interpolation": "bicubic",
                           "mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]}
    path = codec.save_pretrained(tmp_path / "local" / "fsq-c8l4", {"data": {"dataset": "synthetic"}, "license": "mit"})
    return codec, path, x


def test_repo_ids_are_told_from_paths():
    assert parse_repo_id("org/name") == ("org/name", None)
    assert parse_repo_id("org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("name", "/abs/path", "./rel/x", "a/b/c", "org/..", "org/name.git", ""):
        assert parse_repo_id(bad) is None, bad


def test_save_writes_a_model_card_and_keeps_the_hashed_format(saved):
    codec, path, _ = saved
    assert sorted(p.name for p in path.iterdir()) == sorted(CODEC_FILES)
    card = json.loads((path / "card.json").read_text())
    assert card["sha256"] == hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    readme = (path / "README.md").read_text()
    for want in ("library_name: semcomp", "license: mit", "`ViT-B-32/openai`", '"image_size": 224', "synthetic",
                 "load_codec(", "semcomp pull"):
        assert want in readme, want
    assert FSQCodec.from_pretrained(path).weights_hash == codec.weights_hash


def test_load_from_a_prefilled_hub_cache_offline(saved, offline_hub, tmp_path):
    codec, path, x = saved
    fill_cache(offline_hub, "someone/fsq-vitb32", path, refs=("main", "v1"))
    for name, rev in (("someone/fsq-vitb32", None), ("someone/fsq-vitb32@v1", None), ("someone/fsq-vitb32", COMMIT)):
        got = load_codec(name, revision=rev, backbone="ViT-B-32/openai")
        assert got.weights_hash == codec.weights_hash and torch.equal(got.encode(x), codec.encode(x))
    assert Codec.from_pretrained("someone/fsq-vitb32").spec == "fsq-c8l4"
    with pytest.raises(CodecError, match="made for backbone 'ViT-B-32/openai', not 'ViT-L-14/openai'"):
        load_codec("someone/fsq-vitb32", backbone="ViT-L-14/openai")
    with pytest.raises(CodecError, match="someone/missing is not a local codec folder.*Hugging Face Hub"):
        load_codec("someone/missing")
    with pytest.raises(CodecError, match="someone/fsq-vitb32@nope"):
        load_codec("someone/fsq-vitb32", revision="nope")
    with pytest.raises(CodecError, match="holds a fsq codec"):
        from semcomp.codecs.vq import PQVAE

        PQVAE.from_pretrained("someone/fsq-vitb32")


def test_an_altered_cached_file_fails_the_card_check(saved, offline_hub):
    _, path, _ = saved
    snap = fill_cache(offline_hub, "someone/tampered", path)
    blob = (snap / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[-3] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(CodecError, match="does not match the sha256 in its card"):
        load_codec("someone/tampered")


def test_pull_installs_where_the_app_looks(saved, offline_hub, tmp_path, monkeypatch):
    from semcomp import zoo
    from semcomp.hub import pull_codec

    codec, path, _ = saved
    fill_cache(offline_hub, "someone/fsq-vitb32", path)
    monkeypatch.setenv("SEMCOMP_CODECS", str(tmp_path / "mine"))
    out = pull_codec("someone/fsq-vitb32")
    assert out == tmp_path / "mine" / "ViT-B-32_openai" / "fsq-c8l4" and not (out / "model.safetensors").is_symlink()
    assert json.loads((out / "source.json").read_text())["hub_repo"] == "someone/fsq-vitb32"
    found = [c for c in zoo.shipped_codecs("ViT-B-32/openai") if c["spec"] == "fsq-c8l4"]
    assert [c["path"] for c in found] == [out] and load_codec(out).weights_hash == codec.weights_hash
    with pytest.raises(CodecError, match="exists; pass force=True"):
        pull_codec("someone/fsq-vitb32")
    assert pull_codec("someone/fsq-vitb32", force=True) == out


def test_push_checks_the_folder_and_uploads_exactly_the_codec_files(saved, monkeypatch, tmp_path):
    import huggingface_hub

    _, path, _ = saved
    calls = {}
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **k: calls.setdefault("create", (repo_id, k)))

    def upload(**k):
        calls["upload"] = k
        return type("CommitInfo", (), {"commit_url": "https://hf.co/someone/x/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload)
    codec = load_codec(path)
    assert codec.push_to_hub("someone/x", private=True) == "https://hf.co/someone/x/commit/1"
    assert calls["create"] == ("someone/x", {"private": True, "token": None, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["allow_patterns"] == CODEC_FILES and calls["upload"]["repo_id"] == "someone/x"
    from semcomp.hub import push_folder

    (path / "model.safetensors").write_bytes(b"broken")
    with pytest.raises(CodecError):
        push_folder(path, "someone/x")  # never uploads a broken folder
    with pytest.raises(CodecError, match="org/name"):
        push_folder(path, "not-a-repo")


def test_readme_hub_snippet_runs_offline(saved, offline_hub, monkeypatch):
    """The README's Hub snippet, against a cached repo of that name (and a mocked upload)."""
    import re

    import huggingface_hub

    codec, path, _ = saved
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Codecs for your own backbone", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    repo = re.search(r'load_codec\("([^"]+)"', code).group(1)
    codec.backbone = re.search(r'backbone="([^"]+)"', code).group(1)
    fill_cache(offline_hub, repo, codec.save_pretrained(path.parent / "readme", {}))
    uploads = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: uploads.append(k) or "url")
    exec(compile(code, "README.md", "exec"), {})
    assert [u["repo_id"] for u in uploads] == ["you/another-repo"]
