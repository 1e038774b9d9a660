"""Atomic file writes: a reader sees the old file or the new one, never a part.

The one primitive every writer of the package uses (model files, fit outputs, checkpoints, the
compilation cache's entries): write a temporary file in the same folder, flush it to disk,
rename it over the target.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


def write_bytes_atomically(path: str, data: bytes) -> None:
    """Write `data` to `path`: a temporary file renamed over it (`replace_atomically`)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    # mode 0o666 filtered by the umask, like any ordinary file (mkstemp would give 0600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    replace_atomically(path, tmp, fd, [data])


def replace_atomically(
    path: str, tmp: str, fd: int, parts: Sequence[bytes], *, mode: int | None = None
) -> None:
    """Write `parts` to the temporary file `tmp` (open as `fd`, which this closes), flush them
    to disk and rename `tmp` over `path`: a reader sees the old file or the new one, never a
    part. `mode`: permissions to give `tmp` first. On any failure `tmp` is removed."""
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            for part in parts:
                f.write(part)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, racy with threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
