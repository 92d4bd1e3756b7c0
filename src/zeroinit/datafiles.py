"""The files behind a downloaded dataset (`Files`: dataset=mnist, dataset=cifar10; the
registry in zeroinit.data says which dataset has which): which are expected where, which are
missing, and downloading them through torchvision, once, with a bounded wait.

A download goes to a temporary folder inside the data folder; files are moved into place only
after torchvision has checked them (the md5 checksums of the archives it downloads; CIFAR-10's
batches again after extraction), so a failed or interrupted download leaves nothing
half-written. A socket time-out bounds every network wait: where a compute node's network
hangs instead of refusing, a download fails after DOWNLOAD_TIMEOUT_S rather than never (name
look-ups are not covered; they fail at once where there is no DNS).
"""

import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from zeroinit.errors import SweepError

DOWNLOAD_TIMEOUT_S = 30.0  # per connect or read, not for the whole download
OFFLINE_HINT = "dataset=mnist5k (the embedded MNIST subset)"


@dataclass(frozen=True)
class Files:
    source: str  # the dataset's `source` (conf/dataset/*.yaml)
    cls: type  # the torchvision dataset class that reads (and downloads) them
    folder: str  # where they live, relative to the data folder (torchvision's layout)
    names: tuple  # the files a run reads
    url: str  # where they come from (the first mirror)


def mnist_files() -> Files:
    from torchvision.datasets import MNIST

    return Files(
        "mnist",
        MNIST,
        os.path.join("MNIST", "raw"),
        tuple(os.path.splitext(name)[0] for name, _ in MNIST.resources),
        MNIST.mirrors[0],
    )


def cifar10_files() -> Files:
    from torchvision.datasets import CIFAR10

    return Files(
        "cifar10",
        CIFAR10,
        CIFAR10.base_folder,
        tuple(name for name, _ in CIFAR10.train_list + CIFAR10.test_list)
        + (CIFAR10.meta["filename"],),
        CIFAR10.url,
    )


def folder(spec: Files, data_dir) -> Path:
    return Path(data_dir) / spec.folder


def missing(spec: Files, data_dir) -> list[str]:
    """The files of `spec` that are not in `data_dir` (empty when all are there)."""
    return [name for name in spec.names if not (Path(data_dir) / spec.folder / name).is_file()]


def how_to_get(spec: Files, data_dir, failed: bool = False) -> str:
    """The ways out, for the end of an error message: `make data`, the key that points to
    files one already has, the offline dataset."""
    command = f"python src/prepare_data.py dataset={spec.source}"
    if os.path.normpath(str(data_dir)) != "data":
        command += f" paths.data_dir={data_dir}"
    where = "on a machine with internet" if failed else f"from {spec.url}"
    return (
        f"`make data` downloads them {where} ({command}; on a cluster, on the login "
        f"node); files you already have: paths.data_dir=<the folder that holds "
        f"{spec.folder}/> dataset.download=false; offline: {OFFLINE_HINT}"
    )


def missing_message(spec: Files, data_dir, names, why: str = "") -> str:
    return (
        f"dataset={spec.source}: missing in {folder(spec, data_dir)}: {', '.join(names)}"
        f"{'; ' + why if why else ''}. {how_to_get(spec, data_dir, failed=bool(why))}"
    )


@contextmanager
def socket_timeout(seconds: float):
    # torchvision opens its URLs without a time-out, so without this a hung network blocks for
    # ever. Process-wide, hence restored right after.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _reason(e: BaseException, timeout_s: float) -> str:
    text = [line.strip() for line in str(e).splitlines() if line.strip()]
    if isinstance(e, TimeoutError) or any("timed out" in line for line in text):
        return f"no answer within {timeout_s:g} s"
    # torchvision's MNIST lists every mirror it tried, one per line: the last says enough
    return f"{type(e).__name__}: {text[-1]}" if text else type(e).__name__


def fetch(spec: Files, data_dir, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> float:
    """Download `spec`'s files into `data_dir` through torchvision (which checks the
    checksums); returns the seconds it took. Raises SweepError, one line, if it fails."""
    root = Path(data_dir)
    print(
        f"{spec.source}: downloading from {spec.url} into {root / spec.folder} "
        f"(a wait of over {timeout_s:g} s fails)",
        flush=True,
    )
    start = time.monotonic()
    created = [p for p in (root, *root.parents) if not p.exists()]
    tmp = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
        with socket_timeout(timeout_s):
            spec.cls(root=str(tmp), train=True, download=True)  # both splits' files
        _move_in(tmp / spec.folder, root / spec.folder)
    except Exception as e:  # noqa: BLE001 - network, proxy, full disk: one line, whatever it is
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for path in created:  # the folders made for it, if still empty: nothing left behind
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
        raise SweepError(
            missing_message(
                spec,
                data_dir,
                missing(spec, data_dir) or spec.names,
                f"the download from {spec.url} failed ({_reason(e, timeout_s)})",
            )
        ) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return time.monotonic() - start


def _move_in(src: Path, dst: Path) -> None:
    # File by file (os.replace is atomic): replaces corrupted files, keeps unrelated ones.
    # MNIST's .gz archives come along, so their checksums can be checked again later.
    dst.mkdir(parents=True, exist_ok=True)
    for path in sorted(src.iterdir()):
        if path.is_file():
            os.replace(path, dst / path.name)


def archive_checksums(spec: Files, data_dir) -> str:
    """What torchvision's checksums say about the downloaded archives kept beside the files
    (MNIST keeps its .gz files; CIFAR-10's batches are checked on every load instead)."""
    if not hasattr(spec.cls, "resources"):  # checked by torchvision whenever it reads them
        return "checksums match torchvision's"
    from torchvision.datasets.utils import check_integrity

    archives = [(Path(data_dir) / spec.folder / name, md5) for name, md5 in spec.cls.resources]
    present = [(path, md5) for path, md5 in archives if path.is_file()]
    if not present:
        return "no .gz archives to checksum (files read and parsed)"
    bad = [path.name for path, md5 in present if not check_integrity(str(path), md5)]
    if bad:
        raise SweepError(
            f"dataset={spec.source}: {', '.join(bad)} in {folder(spec, data_dir)} "
            f"do not match torchvision's checksums. {how_to_get(spec, data_dir)}"
        )
    return f"{len(present)} archives match torchvision's checksums"


def size(spec: Files, data_dir) -> tuple[int, int]:
    """(files, bytes) in the dataset's folder."""
    paths = [p for p in folder(spec, data_dir).iterdir() if p.is_file()]
    return len(paths), sum(p.stat().st_size for p in paths)
