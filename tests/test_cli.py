import json
import subprocess
import sys

import numpy as np

import neuraldiffeq as nde
from neuraldiffeq.cli import main


def test_demo_spiral_end_to_end(tmp_path, capsys):
    out = tmp_path / "spiral"
    code = main(
        [
            "demo",
            "spiral",
            "--steps",
            "30",
            "--lbfgs-steps",
            "3",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert {"fit.png", "metrics.json", "model.eqx"} <= {p.name for p in out.iterdir()}
    png = (out / "fit.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 33 and len(metrics["stages"]) == 2
    assert metrics["trajectory_loss"] < metrics["stages"][0]["first_loss"]
    model = nde.load(out / "model.eqx")
    data = nde.datasets.spiral()
    assert np.all(np.isfinite(np.asarray(model(data.ts, data.ys[0]))))
    assert "final trajectory loss" in capsys.readouterr().out


def test_cli_reports_bad_arguments_without_traceback(tmp_path, capsys):
    code = main(["demo", "spiral", "--steps", "0", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "steps must be a positive integer" in capsys.readouterr().err


def test_module_entry_point_help():
    proc = subprocess.run(
        [sys.executable, "-m", "neuraldiffeq", "demo", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "spiral" in proc.stdout
