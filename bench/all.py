"""Every benchmark in one command, into one dated report folder.

    python -m bench.all                      # or: semcomp bench
    python -m bench.all --quick              # minutes: small sizes, skips the slow heads/app benches
    python -m bench.all --only entropy_coding,scale
    python -m bench.all --publish            # and copy the results to bench/results/, which the README cites

Writes ``bench/results/<YYYY-MM-DD>-<machine>/``: each script's JSON (machine info: CPU model, cores, torch /
faiss / numpy versions, thread settings, git commit, command), its Markdown tables and plots, a ``REPORT.md``
that gathers them with each step's status and wall time, and ``bench/results/LATEST`` naming the folder.
Each step runs as its own process with ``SEMCOMP_BENCH_OUT`` pointing there; a failing step is reported and
the rest still run. The flat ``bench/results/*.json`` are the last individually-run results (the app and
``semcomp.zoo`` read ``rate_accuracy.json`` from there); this folder is a complete, comparable snapshot.

Inputs: feature files under ``~/.cache/semcomp/features`` (made with ``semcomp extract`` when missing) and,
for the 100k scale run, the Tiny-ImageNet folder layout at ``$TIN`` (default
``~/.cache/semcomp/data/tiny-imagenet-200``; without it the shared shards' 60k train images are used).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FEAT = Path(os.environ.get("FEAT", Path.home() / ".cache" / "semcomp" / "features"))
TIN = Path(os.environ.get("TIN", Path.home() / ".cache" / "semcomp" / "data" / "tiny-imagenet-200"))


def steps(quick: bool) -> list[tuple[str, list[str]]]:
    """(name, argv) in run order; the cheap, headline ones first."""
    train, val = str(FEAT / "tin-train.safetensors"), str(FEAT / "tin-val.safetensors")
    threads = str(os.cpu_count() or 1)
    source = ["--source", str(TIN)] if (TIN / "train").is_dir() else []
    out = [
        ("rate_accuracy", ["bench/rate_accuracy.py", "--features", val]),
        ("rate_synthetic", ["bench/rate_synthetic.py"]),
        ("entropy_coding", ["bench/entropy_coding.py"]),
        ("codec_speed_1thread", ["bench/codec_speed.py", "--threads", "1"]),
        (f"codec_speed_{threads}thread", ["bench/codec_speed.py", "--threads", threads]),
        ("scale", ["bench/scale.py", *source] + (["--sizes", "2000,5000"] if quick else [])),
        ("peers", ["bench/peers.py", "--train", train, "--test", val]),
    ]
    if quick:
        return out
    return out + [
        ("probe", ["bench/probe.py", "--train", train, "--test", val]),
        ("pixel_vs_semantic", ["bench/pixel_vs_semantic.py"]),
        ("caption", ["bench/caption.py"]),
        ("segment", ["bench/segment.py", "--n", "500"]),
        ("generate", ["bench/generate.py", "--n", "100"]),
        ("app_latency", ["bench/app_latency.py"]),
        ("app_load", ["bench/app_load.py", "--clients", "8", "--requests", "25"]),
        ("fuzz_bitstream", ["bench/fuzz_bitstream.py", "--seconds", "300"]),
    ]


def machine_tag() -> str:
    cpu = ""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or platform.machine()
    tag = re.sub(r"[^a-z0-9]+", "-", f"{cpu} {os.cpu_count()}c".lower()).strip("-")
    return tag[:48]


def ensure_features(env: dict) -> None:
    FEAT.mkdir(parents=True, exist_ok=True)
    for split, extra in (("train", ["--source", str(TIN)] if (TIN / "train").is_dir() else []), ("val", [])):
        path = FEAT / f"tin-{split}.safetensors"
        if not path.exists():
            subprocess.run([sys.executable, "-m", "semcomp.cli", "extract", "--split", split, *extra, "--out", str(path)],
                           cwd=ROOT, env=env, check=True)


def report(out: Path, log: list[dict]) -> Path:
    lines = [f"# semcomp benchmark report — {out.name}", "",
             "Every number below comes from the JSON next to this file, which records the machine, versions, thread "
             "settings, git commit and the exact command of its step.", "",
             "| step | status | wall time | run by |", "|---|---|---:|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} s | `{r.get('run_by', 'python -m bench.all')}` |" for r in log]
    for r in log:
        lines += ["", f"## {r['name']}", ""]
        for md in sorted(out.glob(f"{r['name']}*.md")):
            lines += [md.read_text().strip(), ""]
        for png in sorted(out.glob(f"{r['name']}*.png")):
            lines += [f"![{png.stem}]({png.name})", ""]
        if r["status"] != "ok":
            lines += ["```", r.get("stderr_tail", ""), "```"]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated step names")
    ap.add_argument("--out", help="report folder (default bench/results/<date>-<machine>)")
    ap.add_argument("--publish", action="store_true",
                    help="also copy the successful steps' JSON/Markdown/plots to bench/results/, the files the README cites")
    argv_in = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(argv)
    out = Path(a.out) if a.out else RESULTS / f"{datetime.date.today().isoformat()}-{machine_tag()}"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SEMCOMP_BENCH_OUT": str(out), "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    chosen = steps(a.quick)
    if a.only:
        names = a.only.split(",")
        unknown = set(names) - {n for n, _ in steps(False)}
        if unknown:
            ap.error(f"unknown steps {sorted(unknown)}; known: {[n for n, _ in steps(False)]}")
        chosen = [s for s in steps(False) if s[0] in names]
    if any("--features" in argv or "--train" in argv for _, argv in chosen):
        ensure_features(env)
    # a rerun of some steps into the same folder keeps the other steps' entries (the report covers them all)
    previous = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else []
    log = [r for r in previous if r["name"] not in {n for n, _ in chosen}]
    for name, argv in chosen:
        t0 = time.time()
        print(f"== {name}: python {' '.join(argv)}", flush=True)
        p = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
        entry = {"name": name, "argv": argv, "status": "ok" if p.returncode == 0 else f"failed (exit {p.returncode})",
                 "seconds": time.time() - t0, "run_by": "python -m bench.all " + " ".join(argv_in)}
        if p.returncode != 0:
            entry["stderr_tail"] = p.stderr[-3000:]
            print(p.stderr[-3000:], file=sys.stderr)
        log.append(entry)
        print(f"   {entry['status']} in {entry['seconds']:.0f} s", flush=True)
        (out / "steps.json").write_text(json.dumps(log, indent=2))
    path = report(out, log)
    if a.publish:
        import shutil

        for r in log:
            if r["status"] == "ok":
                for f in out.glob(f"{r['name']}*"):
                    if f.suffix in (".json", ".md", ".png"):
                        shutil.copy2(f, RESULTS / f.name)
    if not a.out:
        (RESULTS / "LATEST").write_text(out.name + "\n")
    print("report:", path)
    return 0 if all(r["status"] == "ok" for r in log if r["name"] in {n for n, _ in chosen}) else 1


if __name__ == "__main__":
    sys.exit(main())
