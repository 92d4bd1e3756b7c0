"""`make data` (src/prepare_data.py) and the download path (zeroinit.datafiles): files already
there are verified and left alone, downloads go through torchvision from a local server, and
with the network down or hung the answer is one line, in bounded time."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from torchvision.datasets import CIFAR10, MNIST

import fakenet
import prepare_data
from fakedata import MNIST_FILES, patch_cifar10_md5s, write_cifar10, write_mnist
from zeroinit import datafiles
from zeroinit.data import NO_DOWNLOAD_ENV, ImageDataModule, load_cifar10
from zeroinit.errors import SweepError

ROOT = Path(__file__).resolve().parent.parent
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: proves that nothing was downloaded."""

    def connect(*args, **kwargs):
        raise AssertionError("tried to connect to the network")

    monkeypatch.setattr(socket.socket, "connect", connect)


def snapshot(root: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------ files already there
def test_files_already_there_are_a_noop_that_reports_them(
    tmp_path, monkeypatch, capsys, no_network
):
    write_mnist(tmp_path, n_train=20, n_test=10)
    write_cifar10(tmp_path, per_batch=4, n_test=10)
    patch_cifar10_md5s(monkeypatch, tmp_path)  # torchvision's checksum check runs, and passes
    before = snapshot(tmp_path)
    assert prepare_data.main([f"paths.data_dir={tmp_path}"]) == 0  # as `make data` runs it
    out = capsys.readouterr()
    assert out.err == ""
    mnist, cifar = out.out.strip().splitlines()
    assert mnist.startswith(f"mnist: {tmp_path / 'MNIST' / 'raw'}: 4 files, ")
    assert "20 train + 10 test images of 1x28x28, 10 classes" in mnist
    assert cifar.startswith(f"cifar10: {tmp_path / 'cifar-10-batches-py'}: 7 files, ")
    assert "20 train + 10 test images of 3x32x32, 10 classes" in cifar
    assert "checksums match torchvision's" in cifar
    assert all(line.endswith("already there, nothing downloaded") for line in (mnist, cifar))
    assert snapshot(tmp_path) == before  # nothing written, nothing touched


def test_the_command_line_reports_mnist_files(tmp_path):
    write_mnist(tmp_path / "data")
    proc = subprocess.run(
        [
            sys.executable,
            "src/prepare_data.py",
            "dataset=mnist",
            f"paths.data_dir={tmp_path / 'data'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith(f"mnist: {tmp_path / 'data' / 'MNIST' / 'raw'}: 4 files")
    assert line.endswith("already there, nothing downloaded")


def test_verify_only_with_files_missing_is_one_error_line(tmp_path, capsys, no_network):
    write_mnist(tmp_path)
    assert (
        prepare_data.main(
            ["dataset=mnist,cifar10", f"paths.data_dir={tmp_path}", "dataset.download=false"]
        )
        == 2
    )
    out = capsys.readouterr()
    assert out.out.startswith("mnist: ")  # the other dataset is still checked and reported
    (error,) = out.err.strip().splitlines()
    folder = tmp_path / "cifar-10-batches-py"
    assert error.startswith(
        f"error: dataset=cifar10: missing in {folder}: " + ", ".join(CIFAR_FILES)
    )
    assert "`make data`" in error and "paths.data_dir" in error
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_an_unknown_key_is_one_error_line(capsys):
    assert prepare_data.main(["dataset=imagenet"]) == 2
    (error,) = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("error: ") and "dataset/imagenet" in error


# ------------------------------------------------------------------ downloads
def serve_cifar10(tmp_path, monkeypatch):
    """A cifar-10-python.tar.gz of small batches on a local server, with torchvision's
    checksums pointed at it; returns what it serves."""
    source = tmp_path / "served"
    write_cifar10(source, per_batch=3, n_test=6, seed=1)
    patch_cifar10_md5s(monkeypatch, source)
    archive = fakenet.tar_gz(source / CIFAR10.base_folder)
    monkeypatch.setattr(CIFAR10, "tgz_md5", fakenet.md5(archive))
    return {CIFAR10.filename: archive}


def test_cifar10_download_through_torchvision(tmp_path, monkeypatch, capsys):
    files = serve_cifar10(tmp_path, monkeypatch)
    data = tmp_path / "data"
    with fakenet.serve(files) as url:
        monkeypatch.setattr(CIFAR10, "url", url + CIFAR10.filename)
        line = prepare_data.prepare("cifar10", str(data), download=True)
    assert "15 train + 6 test images" in line and "downloaded in" in line
    assert sorted(p.name for p in (data / CIFAR10.base_folder).iterdir()) == sorted(
        p.name for p in (tmp_path / "served" / CIFAR10.base_folder).iterdir()
    )
    assert [p.name for p in data.iterdir()] == [CIFAR10.base_folder]  # no archive, no temp
    # a second time: a no-op
    assert prepare_data.prepare("cifar10", str(data), download=True).endswith(
        "already there, nothing downloaded"
    )


def test_corrupted_files_are_downloaded_again(tmp_path, monkeypatch):
    files = serve_cifar10(tmp_path, monkeypatch)
    data = tmp_path / "data"
    write_cifar10(data, per_batch=3, n_test=6, seed=2)  # same names, other bytes
    with fakenet.serve(files) as url:
        monkeypatch.setattr(CIFAR10, "url", url + CIFAR10.filename)
        line = prepare_data.prepare("cifar10", str(data), download=True)
    assert "corrupted, downloaded again" in line
    again = prepare_data.prepare("cifar10", str(data), download=False)
    assert again.endswith("already there, nothing downloaded")


def test_mnist_download_through_torchvision_keeps_the_checked_archives(tmp_path, monkeypatch):
    source = tmp_path / "served"
    write_mnist(source, n_train=30, n_test=10)
    raw = source / "MNIST" / "raw"
    archives = {f"{name}.gz": fakenet.gz(raw / name) for name in MNIST_FILES}
    monkeypatch.setattr(MNIST, "resources", [(n, fakenet.md5(b)) for n, b in archives.items()])
    data = tmp_path / "data"
    with fakenet.serve(archives) as url:
        monkeypatch.setattr(MNIST, "mirrors", [fakenet.refused(), url])  # first mirror down
        line = prepare_data.prepare("mnist", str(data), download=True)
    assert "30 train + 10 test images of 1x28x28" in line and "downloaded in" in line
    assert "4 archives match torchvision's checksums" in line
    raw = data / "MNIST" / "raw"
    assert sorted(p.name for p in raw.iterdir()) == sorted([*MNIST_FILES, *archives])


def test_hung_network_fails_after_the_socket_timeout(tmp_path, monkeypatch):
    data = tmp_path / "data"
    with fakenet.silent() as url:
        monkeypatch.setattr(CIFAR10, "url", url + CIFAR10.filename)
        start = time.monotonic()
        with pytest.raises(SweepError) as e:
            datafiles.fetch(datafiles.cifar10_files(), str(data), timeout_s=1)
        elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed  # one time-out (two at most), not for ever
    message = str(e.value)
    assert "\n" not in message
    assert f"missing in {data / CIFAR10.base_folder}: " + ", ".join(CIFAR_FILES) in message
    assert "failed (no answer within 1 s)" in message
    assert "`make data` downloads them on a machine with internet" in message
    assert not data.exists()  # nothing half-written, not even the empty folder


def test_refused_connection_fails_at_once_for_a_single_run(tmp_path, monkeypatch):
    # a single run with dataset.download=true downloads itself, through the same path
    monkeypatch.setattr(MNIST, "mirrors", [fakenet.refused(), fakenet.refused()])
    start = time.monotonic()
    with pytest.raises(SweepError) as e:
        ImageDataModule("mnist", data_dir=str(tmp_path), download=True).load()
    assert time.monotonic() - start < 10
    assert "Connection refused" in str(e.value) and "MNIST" in str(e.value)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_runs_of_a_sweep_never_download(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv(NO_DOWNLOAD_ENV, "1")  # what the sweep's preflight sets for its runs
    with pytest.raises(SweepError, match="missing in .*cifar-10-batches-py.*`make data`"):
        ImageDataModule("cifar10", data_dir=str(tmp_path), download=True).load()
    with pytest.raises(SweepError, match="missing"):
        load_cifar10(str(tmp_path), download=False)
    assert os.listdir(tmp_path) == []
