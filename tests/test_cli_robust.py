"""The CLI never loses a fit to I/O, writes strict JSON with the user's umask, stops cleanly on
Ctrl-C, and answers --help/--version without fitting anything (issue 10, items 2, 5, 7)."""

import json
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

import neuraldiffeq as nde
from neuraldiffeq.cli import main
from neuraldiffeq.fitting import series
from neuraldiffeq.io import outputs

TINY = ["--hidden", "4", "--depth", "1", "--steps", "3", "--lbfgs-steps", "0", "--no-progress"]
FAST = [*TINY, "--strategy", "trajectory"]  # one stage, one compilation


def write_csv(path, scale=1.0, blank=None, n=12):
    ts = np.linspace(0.0, 4.0, n)
    lines = ["t,x,y"]
    for i, t in enumerate(ts):
        x = "" if i == blank else repr(float(scale * np.cos(t)))
        lines.append(f"{float(t)!r},{x},{float(scale * np.sin(t))!r}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def strict_json(path):
    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_unwritable_out_is_refused_before_fitting(tmp_path, capsys, monkeypatch):
    fitted = []
    monkeypatch.setattr(series, "fit_building", lambda *a, **k: fitted.append(1))
    blocker = tmp_path / "file"
    blocker.write_text("")
    csv = write_csv(tmp_path / "d.csv")
    assert main(["fit", csv, "--time", "t", "--out", str(blocker / "sub"), *FAST]) == 2
    assert "cannot create the folder" in one_line_error(capsys)

    def no_write(path, data):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(outputs, "write_bytes_atomically", no_write)
    assert main(["fit", csv, "--time", "t", "--out", str(tmp_path / "o"), *FAST]) == 2
    assert "cannot write files there (Permission denied)" in one_line_error(capsys)
    assert fitted == []  # refused before any fitting


def test_model_goes_to_a_temp_folder_when_out_breaks_mid_fit(tmp_path, capsys, monkeypatch):
    real_save = outputs.save_model
    out = tmp_path / "o"

    def failing_save(path, model):
        if str(out) in path:  # the folder went read-only after the probe
            raise OSError(30, "Read-only file system", path)
        real_save(path, model)

    monkeypatch.setattr(outputs, "save_model", failing_save)
    csv = write_csv(tmp_path / "d.csv")
    assert main(["fit", csv, "--time", "t", "--out", str(out), *FAST]) == 1
    err = one_line_error(capsys)
    assert "Read-only file system" in err and "saved at" in err
    saved = err.split("saved at ")[1].split(" instead")[0]
    assert nde.load(saved).field is not None
    metrics = strict_json(type(out)(os.path.dirname(saved)) / "metrics.json")
    assert np.isfinite(metrics["train_mse"])


def test_model_is_written_before_metrics_and_plots(tmp_path, capsys, monkeypatch):
    import neuraldiffeq.io.plotting as plotting

    def no_plot(fig, path):
        raise OSError(28, "No space left on device", path)

    monkeypatch.setattr(plotting, "save_figure", no_plot)
    out = tmp_path / "o"
    csv = write_csv(tmp_path / "d.csv")
    assert main(["fit", csv, "--time", "t", "--out", str(out), *FAST]) == 1
    err = one_line_error(capsys)
    assert "fit.png (No space left on device)" in err and "model is saved at" in err
    assert nde.load(out / "model.eqx") is not None and strict_json(out / "metrics.json")
    assert not [p for p in os.listdir(out) if ".tmp" in p]


def test_huge_values_fit_with_finite_numbers_and_strict_json(tmp_path, capsys):
    out = tmp_path / "o"
    csv = write_csv(tmp_path / "big.csv", scale=1e30)
    assert main(["fit", csv, "--time", "t", "--out", str(out), *FAST]) == 0
    metrics = strict_json(out / "metrics.json")
    assert np.isfinite(metrics["train_mse"]) and metrics["train_mse"] > 0
    assert all(np.isfinite(metrics["normalisation"]["std"]))
    assert 0.3e30 < metrics["normalisation"]["std"][0] < 1e30
    assert "nan" not in capsys.readouterr().out.lower()


def test_outputs_follow_the_umask(tmp_path, capsys):
    csv = write_csv(tmp_path / "d.csv")
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):
        old = os.umask(umask)
        try:
            out = tmp_path / f"o{umask:o}"
            assert main(["fit", csv, "--time", "t", "--out", str(out), *FAST]) == 0
        finally:
            os.umask(old)
        modes = {p: stat.S_IMODE(os.stat(out / p).st_mode) for p in os.listdir(out)}
        assert modes == {"model.eqx": mode, "metrics.json": mode, "fit.png": mode}


def test_ctrl_c_exits_130_and_saves_the_best_model(tmp_path, capsys, monkeypatch):
    from neuraldiffeq.fitting.fit import fit_building as real_fit

    def interrupt_at_step_2(step, loss, model):
        if step >= 2:
            raise KeyboardInterrupt  # what Ctrl-C raises inside the training loop

    monkeypatch.setattr(
        series, "fit_building", lambda *a, **k: real_fit(*a, **k, callback=interrupt_at_step_2)
    )
    out = tmp_path / "o"
    csv = write_csv(tmp_path / "d.csv")
    assert main(["fit", csv, "--time", "t", "--out", str(out), *FAST]) == 130
    err = one_line_error(capsys)
    assert err == f"neuraldiffeq: interrupted at step 2, best model saved to {out}/model.eqx"
    assert strict_json(out / "metrics.json")["interrupted"] is True
    assert nde.load(out / "model.eqx") is not None


# the "auto" preset through the CLI (test_shooting runs the library's path by default)
@pytest.mark.long
def test_empty_cell_on_a_segment_start_no_longer_stops_auto(tmp_path, capsys):
    csv = write_csv(tmp_path / "hole.csv", blank=2)  # auto's group size 3: starts 0, 2, 4, ...
    for extra in ([], ["--group-size", "4"]):
        out = tmp_path / f"o{len(extra)}"
        assert main(["fit", csv, "--time", "t", "--out", str(out), *TINY, *extra]) == 0
        metrics = strict_json(out / "metrics.json")
        assert np.isfinite(metrics["train_mse"])
    assert metrics["group_size"] == 4
    args = ["fit", csv, "--time", "t", "--strategy", "trajectory", "--group-size", "4", *TINY]
    assert main(args) == 2
    assert "--group-size applies to multiple shooting" in one_line_error(capsys)


def test_group_size_reaches_the_shooting_stage():
    from neuraldiffeq.commands.fit_csv import build_stages

    stages = build_stages("auto", 5, 2, 6)
    assert [getattr(s.strategy, "group_size", None) for s in stages] == [6, None, None]
    assert [s.steps for s in stages] == [5, 5, 2]


def test_version_and_help_show_defaults_without_importing_the_commands():
    code = (
        "import sys, contextlib, io\n"
        "from neuraldiffeq.cli import main\n"
        "for argv in (['--version'], ['--help'], ['demo', '--help']):\n"
        "    f = io.StringIO()\n"
        "    with contextlib.redirect_stdout(f):\n"
        "        try: main(argv)\n"
        "        except SystemExit as e: assert e.code == 0, e.code\n"
        "    print(f.getvalue())\n"
        "loaded = [m for m in sys.modules if m.startswith(('neuraldiffeq.demos.', "
        "'neuraldiffeq.commands.', 'neuraldiffeq.fitting.series', 'matplotlib'))]\n"
        "print('LOADED', loaded)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"neuraldiffeq {nde.__version__}" in proc.stdout or "neuraldiffeq " in proc.stdout
    assert "spiral" in proc.stdout and "lynx-hare" in proc.stdout
    assert "LOADED []" in proc.stdout


def test_fit_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["fit", "--help"])
    assert e.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 300)" in out and "(default: auto)" in out and "--group-size" in out


def test_demos_and_commands_do_not_import_each_other():
    root = os.path.dirname(nde.__file__)
    for folder, other in (("demos", "commands"), ("commands", "demos")):
        for name in os.listdir(os.path.join(root, folder)):
            if name.endswith(".py"):
                lines = open(os.path.join(root, folder, name)).read().splitlines()
                imports = [x for x in lines if x.lstrip().startswith(("from ", "import "))]
                assert not [x for x in imports if other in x], (name, imports)
