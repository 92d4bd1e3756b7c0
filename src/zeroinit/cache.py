"""The user's cache folder: what is slow to compute and the same on every run of a machine
(the embedded dataset parsed from its CSV). Everything here can be deleted at any time; it is
rebuilt on next use.

    $ZEROINIT_CACHE, else $XDG_CACHE_HOME/zeroinit, else ~/.cache/zeroinit

A cache that cannot be read or written (a read-only home, a corrupt file) is never an error:
the value is computed as if there were no cache.
"""

import hashlib
import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from zeroinit.files import replaced_atomically

log = logging.getLogger("zeroinit")
CACHE_ENV = "ZEROINIT_CACHE"


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "zeroinit"


def file_digest(path) -> str:
    """A short content hash: a cache entry built from a file is keyed by what the file holds,
    so a new version of it (an upgraded package) gets a new entry."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def arrays(name: str, build) -> dict[str, np.ndarray]:
    """The arrays `build()` returns (a dict of name -> ndarray), from `<cache>/<name>.npz` when
    it is there, else built and saved there (write to a temporary file, then rename: two
    processes filling the cache at once each write a whole file)."""
    path = cache_dir() / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except FileNotFoundError:
        pass
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        log.info("cache %s unreadable (%s): rebuilt", path, e)
    out = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with replaced_atomically(path, binary=True, fsync=False) as f:
            np.savez(f, **out)
    except OSError as e:
        log.info("cache %s not written (%s)", path, e)
    return out
