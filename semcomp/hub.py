"""Codec folders on the Hugging Face Hub, the way models travel (issue 22).

A Hub repo holds one codec folder exactly as ``save_pretrained`` writes it: ``config.json``,
``model.safetensors``, ``card.json`` (sha256 of both) and ``README.md`` (the model card). Nothing is converted,
so the card's hash checks hold on the downloaded copy as on the local one.

* ``load_codec("org/name")`` (or ``"org/name@revision"``, or ``revision=``) downloads the four files with
  ``huggingface_hub.snapshot_download`` into the Hub's own cache (``HF_HOME``), then loads them with every check
  of a local folder. ``HF_HUB_OFFLINE=1`` reads the cache only.
* ``push_folder(folder, "org/name")`` / ``Codec.push_to_hub`` / ``semcomp push`` upload a folder after loading it
  once (a broken folder never goes up).
* ``pull_codec("org/name")`` / ``semcomp pull`` also installs a copy in the user codec folder
  (``semcomp.zoo.user_codecs_dir``) so the app and the receiver find it by backbone like a shipped codec.

Sizes are bounded before anything is downloaded where the Hub says them (``MAX_DOWNLOAD_BYTES``).
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path

from .codecs.base import MAX_STATE_NUMEL, CodecError

logger = logging.getLogger(__name__)

CODEC_FILES = ["config.json", "model.safetensors", "card.json", "README.md"]
# a repo id as the Hub spells it (``org/name``), optionally ``@revision`` (branch, tag or commit)
REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})(?:@(?P<rev>[A-Za-z0-9_./-]{1,128}))?")
# the largest file a codec folder can need: fp32 for every number load_codec accepts, plus tables and header
MAX_DOWNLOAD_BYTES = 4 * MAX_STATE_NUMEL + (64 << 20)


def parse_repo_id(name: str) -> tuple[str, str | None] | None:
    """``("org/name", revision or None)`` if ``name`` reads as a Hub repo id, else None."""
    m = REPO_ID.fullmatch(name) if isinstance(name, str) else None
    if not m or ".." in m["repo"] or m["repo"].endswith((".git", ".")):
        return None
    return m["repo"], m["rev"]


def resolve_codec_folder(path, revision: str | None = None) -> Path:
    """A local folder as it is; a Hub repo id -> the folder of its cached snapshot (downloading what is missing).
    A string that is neither comes back as a Path, for the caller's "does not exist" error."""
    if isinstance(path, Path) or Path(str(path)).exists():
        if revision is not None:
            raise CodecError(f"revision={revision!r} applies to Hub repo ids, and {path} is a local path")
        return Path(path)
    parsed = parse_repo_id(str(path))
    if parsed is None:
        return Path(path)
    repo, rev = parsed
    if rev and revision and rev != revision:
        raise CodecError(f"{path} names revision {rev!r} and revision={revision!r} another")
    return download_codec(repo, rev or revision)


def _hub_error(e: Exception) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def _check_remote_sizes(repo: str, revision: str | None) -> None:
    """Refuse a repo whose codec files the Hub lists as larger than any codec can be, before downloading them.
    Offline (or when the Hub does not say) nothing is checked here; load_codec bounds the files again."""
    from huggingface_hub import HfApi
    from huggingface_hub.constants import HF_HUB_OFFLINE

    if HF_HUB_OFFLINE:
        return
    try:
        info = HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:  # noqa: BLE001 - not found, no network, ...: snapshot_download says it better below
        logger.debug("size check of %s skipped: %s", repo, _hub_error(e))
        return
    for f in info.siblings or []:
        limit = MAX_DOWNLOAD_BYTES if f.rfilename == "model.safetensors" else 1 << 20
        if f.rfilename in CODEC_FILES and f.size is not None and f.size > limit:
            raise CodecError(f"Hub repo {repo}: {f.rfilename} is {f.size:,} bytes, over the {limit:,}-byte limit for a "
                             f"codec folder; not downloaded")


def download_codec(repo: str, revision: str | None = None) -> Path:
    """The local folder (in the Hub cache) holding ``repo``'s codec files at ``revision``."""
    from huggingface_hub import snapshot_download

    _check_remote_sizes(repo, revision)
    try:
        d = snapshot_download(repo, revision=revision, allow_patterns=CODEC_FILES, library_name="semcomp")
    except Exception as e:  # noqa: BLE001 - every hub/network error as one line naming the repo
        where = f"{repo}@{revision}" if revision else repo
        raise CodecError(f"{where} is not a local codec folder, and fetching it from the Hugging Face Hub failed "
                         f"({_hub_error(e)})") from e
    return Path(d)


def push_folder(folder: str | Path, repo_id: str, private: bool = False, token: str | None = None,
                commit_message: str | None = None, revision: str | None = None) -> str:
    """Upload a codec folder to the Hub repo ``repo_id`` (created if missing), after loading it once with every
    check and (re)writing its model card. Returns the commit URL."""
    from huggingface_hub import create_repo, upload_folder

    from .codecs import load_codec

    if parse_repo_id(repo_id) is None or "@" in repo_id:
        raise CodecError(f"a Hub repo id reads org/name, got {repo_id!r}")
    folder = Path(folder)
    codec = load_codec(folder)  # a broken or altered folder never goes up
    write_model_card(folder)
    create_repo(repo_id, private=private, token=token, exist_ok=True, repo_type="model")
    info = upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=CODEC_FILES, token=token,
                         revision=revision, commit_message=commit_message or f"semcomp codec {codec.spec} for {codec.backbone}")
    return str(getattr(info, "commit_url", info))


def pull_codec(repo_id: str, revision: str | None = None, into: str | Path | None = None, force: bool = False) -> Path:
    """Download a Hub codec (through the Hub cache), check it, and install a copy as
    ``<into or user_codecs_dir()>/<backbone>/<spec>/`` where the app and the receiver look. Returns that folder."""
    from .codecs import load_codec
    from .zoo import backbone_dirname, user_codecs_dir

    codec = load_codec(repo_id, revision=revision)
    if not codec.backbone:
        raise CodecError(f"{repo_id} names no backbone in its config.json, so it cannot be filed by backbone; load it "
                         f"with load_codec({repo_id!r}) instead")
    src = resolve_codec_folder(repo_id, revision)
    out = Path(into or user_codecs_dir()) / backbone_dirname(codec.backbone) / codec.spec
    if out.exists() and not force:
        raise CodecError(f"{out} exists; pass force=True (semcomp pull --force) to replace it")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in CODEC_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, tmp / name)  # the cache holds symlinks into blobs: copy the content
    load_codec(tmp)  # the copy passes the same checks
    card = json.loads((tmp / "card.json").read_text()) if (tmp / "card.json").exists() else {}
    (tmp / "source.json").write_text(json.dumps({"hub_repo": repo_id, "revision": revision,
                                                 "sha256": card.get("sha256")}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


# ----------------------------------------------------------------------------- model card
def model_card(config: dict, card: dict) -> str:
    """The README.md of a codec folder: Hub front matter, then what the codec is, what it was trained on and how
    to load it. Built from config.json and card.json alone."""
    spec, bits, backbone = config.get("spec", "?"), config.get("bits", card.get("bits")), config.get("backbone") or "unknown"
    prep = config.get("preprocessing") or {}
    data = card.get("data") or {}
    licence = card.get("license", "apache-2.0")
    budgets = card.get("budgets") or ([int(c) * int(card["stage_bits"]) for c in card.get("cuts", [])]
                                      if card.get("stage_bits") else [bits])
    lines = ["---", "library_name: semcomp", f"license: {licence}",
             "tags:", "- semcomp", "- clip", "- embedding-compression", f"- {config.get('family', 'codec')}", "---", "",
             f"# semcomp codec `{spec}` for `{backbone}`", "",
             f"Compresses L2-normalised {backbone} image embeddings ({config.get('dim')}-d) to {bits} bits"
             + (f", cut to any of {', '.join(map(str, budgets))} bits (a progressive code)" if len(budgets) > 1 else "")
             + ". Made with semcomp; a codec is only valid for the backbone and preprocessing below.",
             "", "| | |", "|---|---|",
             f"| backbone | `{backbone}` |", f"| feature dimension | {config.get('dim')} |",
             f"| preprocessing | {json.dumps(prep) if prep else 'not recorded'} |",
             f"| spec | `{spec}` ({bits} bits an item, fixed length; entropy coding only goes below) |",
             f"| budgets (bits) | {', '.join(map(str, budgets))} |",
             f"| training data | {json.dumps(data) if data else 'not recorded'} |",
             f"| training items | {card.get('train_items', '?')} (held out for model selection: {card.get('holdout_items', '?')}) |",
             f"| held-out cosine | {card.get('holdout_cosine', '?')} |",
             f"| licence | {licence} |", ""]
    ev = card.get("fit_eval")
    if ev:
        lines += ["## Evaluation on held-out images (never trained on)", "", "| bits | mean cosine | zero-shot top-1 (decoded / float) |",
                  "|---|---|---|"]
        for r in ev.get("budgets", []):
            top = f"{r['top1']:.4f} / {r['float_top1']:.4f}" if r.get("top1") is not None else "n/a (no labels)"
            lines.append(f"| {r['bits']} | {r['mean_cosine']:.4f} | {top} |")
        lines += ["", f"{ev.get('items', '?')} held-out images, {ev.get('classes') or 'no'} classes.", ""]
    lines += ["## How to load", "", "```python", "from semcomp.codecs import load_codec", "",
              f"codec = load_codec(\"ORG/NAME\", backbone=\"{backbone}\")  # a Hub repo id or a local folder; checks the backbone",
              "symbols = codec.encode(features)          # (N, D) L2-normalised features -> int symbols",
              "blob = codec.compress(features)          # -> one self-describing .scf bitstream",
              "features_hat = codec.decompress(blob)", "```", "",
              "Command line: `semcomp pull ORG/NAME` installs it where `python app.py --backbone "
              f"{backbone}` and `semcomp receive` find it.", ""]
    if card.get("command"):
        lines += ["## How it was made", "", f"`{card['command']}`", ""]
    return "\n".join(lines)


def write_model_card(folder: str | Path) -> Path:
    """(Re)write ``folder/README.md`` from its config.json and card.json."""
    folder = Path(folder)
    cfg = json.loads((folder / "config.json").read_text())
    card = json.loads((folder / "card.json").read_text()) if (folder / "card.json").exists() else {}
    out = folder / "README.md"
    out.write_text(model_card(cfg, card))
    return out
