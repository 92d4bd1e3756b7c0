"""Download and verify the datasets before a sweep needs them: what `make data` runs.

    python src/prepare_data.py                               # MNIST and CIFAR-10 into data/
    python src/prepare_data.py dataset=cifar10 paths.data_dir=/scratch/data
    python src/prepare_data.py experiment=fig09_cifar_cnn     # what a preset reads
    python src/prepare_data.py dataset=mnist dataset.download=false   # verify, never download

It composes the same config as train.py (conf/train.yaml), so paths.data_dir and
dataset.data_dir mean what they mean there. Downloads go through torchvision, which checks
their checksums; files already there are verified (torchvision's checksums, then read as a run
reads them) and left alone. On a cluster, run it on the login node: compute nodes often have
no internet, and a sweep's runs never download (they read what this put there).
"""

import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException

from zeroinit import data, datafiles
from zeroinit.config import register_resolvers
from zeroinit.errors import SweepError, UserError
from zeroinit.preflight import dataset_of

CONF = Path(__file__).resolve().parent.parent / "conf"
DEFAULT = "dataset=mnist,cifar10"  # what `make data` fetches: every dataset the paper uses


def configs(overrides: list[str]) -> list:
    """The composed config of each job the overrides describe (`dataset=mnist,cifar10`: two),
    expanded as a -m sweep expands them."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return [compose("train", overrides=list(job)) for job in jobs[0]]


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.1f} MB" if n_bytes >= 1e5 else f"{n_bytes / 1e3:.1f} kB"


def prepare(source: str, data_dir: str, download: bool) -> str:
    """Make sure `source` is in `data_dir` and readable; returns one line on what is there.
    Raises UserError (one line) if it is not and cannot be."""
    dataset = data.DATASETS[source]
    if dataset.files is None:  # embedded, or the user's own images: nothing to download
        (x, _), (xt, _), classes = data.read(source, data_dir, False)
        return (
            f"{source}: {dataset.note or data_dir}; {len(x):,} train + {len(xt):,} test "
            f"images of {'x'.join(map(str, x.shape[1:]))}, {len(classes)} classes"
        )
    spec = dataset.files()
    action = "already there, nothing downloaded"
    absent = datafiles.missing(spec, data_dir)
    if absent:
        if not download:
            raise SweepError(datafiles.missing_message(spec, data_dir, absent))
        action = f"downloaded in {datafiles.fetch(spec, data_dir):.0f} s"
    try:
        (x, _), (xt, _), classes = data.read(source, data_dir, False)
    except SweepError:
        if absent or not download:  # just downloaded, or not allowed to: nothing more to try
            raise
        start = time.monotonic()  # corrupted: torchvision's download replaces the files
        datafiles.fetch(spec, data_dir)
        action = f"corrupted, downloaded again in {time.monotonic() - start:.0f} s"
        (x, _), (xt, _), classes = data.read(source, data_dir, False)
    n_files, n_bytes = datafiles.size(spec, data_dir)
    return (
        f"{source}: {datafiles.folder(spec, data_dir)}: {n_files} files, "
        f"{_size(n_bytes)}; {len(x):,} train + {len(xt):,} test images of "
        f"{'x'.join(map(str, x.shape[1:]))}, {len(classes)} classes; "
        f"{datafiles.archive_checksums(spec, data_dir)}; {action}"
    )


def main(argv: list[str]) -> int:
    overrides = list(argv)
    if not any(o.lstrip("+~").split("=")[0] in ("dataset", "experiment") for o in overrides):
        overrides.append(DEFAULT)
    register_resolvers()
    try:
        found = {}
        for cfg in configs(overrides):
            dataset = dataset_of(cfg)
            if dataset is not None:
                found.setdefault((dataset[0], str(Path(dataset[1]).resolve())), dataset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except HydraException as e:  # an unknown key or option: Hydra's own words, one line
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    status = 0
    for source, data_dir, download in found.values():
        try:
            print(prepare(source, data_dir, download), flush=True)
        except UserError as e:  # the other datasets are still prepared
            print(f"error: {e}", file=sys.stderr, flush=True)
            status = 2
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
