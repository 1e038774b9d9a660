"""Writing a fit's outputs so that no fit is ever lost to I/O.

The order is fixed: the model first (the expensive part), then `metrics.json`, then the plots.
The output folder is probed for writability before any fitting starts. If a write fails anyway
(disk full, folder removed or made read-only mid-fit), the model is saved in a fresh temporary
folder instead and an `OutputError` says where, in one line. Files are written to a temporary
name and renamed into place, with the permissions the user's umask gives.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .files import umask, write_bytes_atomically
from .model_files import save

#: exit status of the CLI when an output could not be written (the fit itself succeeded)
EXIT_OUTPUT = 1
#: exit status after Ctrl-C (128 + SIGINT, as shells report it)
EXIT_INTERRUPTED = 130


class OutputError(Exception):
    """An output file could not be written; the message says where the model was saved."""


class Interrupted(Exception):
    """Ctrl-C ended a fit early; the outputs of the best model so far were written."""


def prepare_out(out: str | os.PathLike) -> str:
    """Create the output folder and check that files can be written in it (a probe file).

    Example:
        >>> import tempfile, os
        >>> from neuraldiffeq.io.outputs import prepare_out
        >>> folder = prepare_out(os.path.join(tempfile.mkdtemp(), "fit"))
        >>> os.listdir(folder)
        []
    """
    out = os.fspath(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise ValueError(
            f"--out {out!r}: cannot create the folder ({_reason(e)}); choose another --out."
        ) from None
    probe = os.path.join(out, f".neuraldiffeq-probe-{os.getpid()}")
    try:
        write_bytes_atomically(probe, b"probe")
    except OSError as e:
        raise ValueError(
            f"--out {out!r}: cannot write files there ({_reason(e)}); choose a writable --out."
        ) from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    return out


def to_json(payload: Any) -> str:
    """Strict JSON (RFC 8259): NaN and infinities become `null`, numpy/JAX values plain numbers.

    Example:
        >>> import numpy as np
        >>> from neuraldiffeq.io.outputs import to_json
        >>> to_json({"loss": float("nan"), "std": np.array([1.0, np.inf])})
        '{\\n  "loss": null,\\n  "std": [\\n    1.0,\\n    null\\n  ]\\n}'
    """
    return json.dumps(_jsonable(payload), indent=2, allow_nan=False)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, str | bool) or x is None:
        return x
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if hasattr(x, "__array__") and not isinstance(x, float | np.floating):
        arr = np.asarray(x)
        return _jsonable(arr.tolist() if arr.ndim else arr.item())
    value = float(x)
    return value if math.isfinite(value) else None


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write strict JSON atomically (temp file + rename), with the user's umask.

    Example:
        >>> import json, os, tempfile
        >>> from neuraldiffeq.io.outputs import write_json
        >>> path = os.path.join(tempfile.mkdtemp(), "m.json")
        >>> write_json(path, {"x": float("inf")}); json.load(open(path))
        {'x': None}
    """
    write_bytes_atomically(os.fspath(path), (to_json(payload) + "\n").encode())


def save_model(path: str, model: Any) -> None:
    """`nde.save`, then the permissions the umask gives (nde.save's temp file is 0600)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # nde.save reports this as a ValueError; here it is I/O
        raise FileNotFoundError(2, "folder does not exist", folder)
    save(path, model)
    os.chmod(path, 0o666 & ~umask())


def write_outputs(
    out: str,
    model: Any = None,
    metrics: dict | None = None,
    figures: Sequence[tuple[str, Callable[[str], None]]] = (),
) -> list[str]:
    """Write `model.eqx`, then `metrics.json`, then each figure `(file name, draw(path))`.

    Returns the paths written. Any `OSError` becomes an `OutputError` whose one-line message says
    what failed and where the model is; if `model.eqx` itself cannot be written, the model (and
    metrics) go to a fresh temporary folder instead.

    Example:
        >>> import os, tempfile, neuraldiffeq as nde
        >>> from neuraldiffeq.io.outputs import write_outputs
        >>> out = tempfile.mkdtemp()
        >>> paths = write_outputs(out, nde.NeuralODE(lambda t, y, args: -y), {"loss": 0.5})
        >>> [os.path.basename(p) for p in paths]
        ['model.eqx', 'metrics.json']
    """
    written: list[str] = []
    if model is not None:
        path = os.path.join(out, "model.eqx")
        try:
            save_model(path, model)
        except OSError as e:
            where = _save_elsewhere(model, metrics)
            raise OutputError(f"cannot write {path} ({_reason(e)}); {where}") from None
        written.append(path)
    steps: list[tuple[str, Callable[[str], None]]] = []
    if metrics is not None:
        steps.append(("metrics.json", lambda p: write_json(p, metrics)))
    steps.extend(figures)
    for name, write in steps:
        path = os.path.join(out, name)
        try:
            write(path)
        except OSError as e:
            kept = f"the model is saved at {written[0]}" if model is not None else "no model"
            raise OutputError(f"cannot write {path} ({_reason(e)}); {kept}.") from None
        written.append(path)
    return written


def _save_elsewhere(model: Any, metrics: dict | None) -> str:
    """Save the model (and metrics) in a new temporary folder; say where, in words."""
    try:
        folder = tempfile.mkdtemp(prefix="neuraldiffeq-")
        os.chmod(folder, 0o777 & ~umask())
        save_model(os.path.join(folder, "model.eqx"), model)
        if metrics is not None:
            write_json(os.path.join(folder, "metrics.json"), metrics)
    except OSError as e:
        return f"saving it in a temporary folder failed too ({_reason(e)}): the model is lost."
    return f"the fitted model is saved at {os.path.join(folder, 'model.eqx')} instead."


def _reason(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


def stop_if_interrupted(results: Any, paths: Sequence[str]) -> None:
    """Raise `Interrupted` ("interrupted at step N, best model saved to ...") if a fit was.

    `results` is one `nde.FitResult` or several; call it after the outputs are written.

    Example:
        >>> from neuraldiffeq.io.outputs import stop_if_interrupted
        >>> stop_if_interrupted([], ["out/model.eqx"])  # nothing was interrupted: no error
    """
    results = results if isinstance(results, list | tuple) else [results]
    for result in results:
        if result.interrupted:
            where = f"best model saved to {paths[0]}" if paths else "no model saved"
            raise Interrupted(f"interrupted at step {len(result.losses)}, {where}")
