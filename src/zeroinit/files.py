"""Files written whole or not at all, and paths as a user types them.

Written whole or not at all: a temporary file beside the target, renamed over it.

A reader (the report, a resumed run, another user on a shared disk) sees the previous
complete file or the new one, never a torn one, and the new file gets the mode any other
file of this process gets (0666 minus the umask): a temporary file's own 0600 would leave
results unreadable by a group on a shared cluster disk.
"""

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def replaced_atomically(path, binary: bool = False, fsync: bool = True):
    """`with replaced_atomically(path) as f: f.write(...)`: `path` holds what was written once
    the block ends without an exception, and is untouched otherwise."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb" if binary else "w") as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shown_path(path) -> str:
    """A path as a user would type it: relative to the working folder when inside it."""
    path = Path(path).absolute()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
