"""Publishing folders atomically: write beside the destination, then rename into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def publish_dir(tmp: Path, final: Path, *, replace: bool = False) -> Path:
    """Move the finished folder ``tmp`` to ``final`` in one rename; a reader never sees half.

    For a content-addressed ``final`` (``replace`` False) an existing copy wins and ``tmp`` is
    dropped, so racing attempts that made the same content agree. With ``replace`` an existing
    ``final`` is removed first.
    """
    tmp, final = Path(tmp), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.is_dir():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return final
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError:  # another attempt published the same content first
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise
    return final
