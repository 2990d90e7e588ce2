"""python -m bench.all: every step in its own process, one dated folder, a report naming each step's status."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import bench.all as bench_all  # noqa: E402

GOOD = """
import sys
sys.path.insert(0, {root!r})
from bench.common import RESULTS, record
record("demo", {{"results": [{{"x": 1}}]}})
(RESULTS / "demo.md").write_text("| a |\\n|---|\\n| 1 |\\n")
"""


def test_one_folder_one_report_failures_reported(tmp_path, monkeypatch):
    good = tmp_path / "good.py"
    good.write_text(GOOD.format(root=str(ROOT)))
    bad = tmp_path / "bad.py"
    bad.write_text("raise SystemExit('no features here')\n")
    monkeypatch.setattr(bench_all, "steps", lambda quick: [("demo", [str(good)]), ("broken", [str(bad)])])
    out = tmp_path / "report"
    assert bench_all.main(["--out", str(out)]) == 1  # one step failed: the run says so
    rec = json.loads((out / "demo.json").read_text())
    assert {"cpu", "cores", "torch", "torch_threads", "faiss", "numpy"} <= set(rec["machine"]) and rec["git_commit"] is not None
    report = (out / "REPORT.md").read_text()
    assert "| demo | ok |" in report and "| broken | failed (exit 1) |" in report and "no features here" in report
    assert "python -m bench.all --out" in report
    assert "| a |" in report
    steps = json.loads((out / "steps.json").read_text())
    assert [s["name"] for s in steps] == ["demo", "broken"]


def test_unknown_step_is_refused(monkeypatch, capsys):
    import pytest

    with pytest.raises(SystemExit):
        bench_all.main(["--only", "nonsense", "--out", "/tmp/unused"])
    assert "unknown steps" in capsys.readouterr().err


def test_semcomp_bench_passes_its_options_to_bench_all():
    import subprocess

    p = subprocess.run([sys.executable, "-m", "semcomp.cli", "bench", "--only", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "unknown steps" in p.stderr


def test_paired_bootstrap_difference_and_its_standard_error():
    import numpy as np

    from bench.paired_se import bootstrap

    rng = np.random.default_rng(0)
    a = rng.random((3, 2000)) < 0.55
    r = bootstrap(a, a.copy(), draws=500, seed=0)
    assert r["diff_points"] == 0 and r["se_images_only"] == 0 and r["se_points"] > 0  # the seeds still differ
    assert bootstrap(a[:1], a[:1].copy(), draws=50, seed=0)["discordant_images_mean"] == 0
    # one seed each, b = a with 200 images flipped wrong and 100 flipped right: the paired SE is sqrt(300) / n
    b = a[:1].copy()
    wrong, right = np.flatnonzero(b[0])[:200], np.flatnonzero(~b[0])[:100]
    b[0, wrong], b[0, right] = False, True
    r = bootstrap(a[:1], b, draws=4000, seed=1)
    assert abs(r["diff_points"] - 5.0) < 1e-9 and r["se_seeds_only"] == 0
    assert abs(r["se_points"] - 100 * np.sqrt(300) / 2000) < 0.1 and r["ci95_points"][0] < 5 < r["ci95_points"][1]
