"""Files only their owner can read: the ledger holds costs, errors and (when asked) arguments and outputs.

Both helpers create with the private mode from the start (no window in which another user could open the file)
and tighten a file or folder of ours that an older version left readable. A folder that already existed and that
we did not create (the user's own, say /tmp or a shared data folder) keeps its mode.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | Path) -> Path:
    """Make `path` (and missing parents) as folders only the owner can use; returns it."""
    path = Path(path)
    if not path.is_dir():
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        for p in missing:
            os.chmod(p, DIR_MODE)  # mkdir's mode goes through the umask, and parents= ignores it
    return path


def private_file(path: str | Path) -> Path:
    """Create `path` empty with mode 0600 if missing, or take group and other access off a file we own."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        st = path.stat()
        if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o077)
    else:
        os.close(fd)
    return path


__all__ = ["DIR_MODE", "FILE_MODE", "private_dir", "private_file"]
