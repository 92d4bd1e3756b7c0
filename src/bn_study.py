"""The BatchNorm study of docs/findings.md: train its runs, then print its tables.

    python src/bn_study.py run [--seeds 5] [--models cifar_cnn_w4 mnist_fnn] [--threads 1]
    python src/bn_study.py report [--root ...] [-o outputs/bn_study.md]
    python src/bn_study.py accuracy [--seeds 5] [--models cifar_cnn_w4 mnist_fnn]
        # to the paper's length (experiment=bn_accuracy, stacked): then
        # python src/report.py outputs/sweeps/bn_accuracy --rank-vs-accuracy
    python src/bn_study.py rounding [--seeds 3] [--device cpu|gpu] [--conditions fp32 fp64]
        # full-width ResNet-50's first steps per precision -> outputs/sweeps/bn_rounding
    python src/bn_study.py padding [--seeds 3] [--sweeps native exact]
        # rounding vs padding (experiment=bn_padding) -> outputs/sweeps/bn_padding; then
        # python src/bn_study.py padding-report [--padding-out docs/padding]

What is run and how it is read: src/zeroinit/findings.py. A finished run is skipped, so `run`
can be repeated (or stopped and resumed) and `--seeds` raised later.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import torch

from zeroinit.findings import (
    PADDING_SWEEPS,
    ROUNDING,
    accuracy_commands,
    batchnorm_report,
    padding_commands,
    report,
    rounding_report,
    rounding_runs,
    run_study,
    train_all,
)
from zeroinit.rounding_padding import padding_report
from zeroinit.run import quiet_lightning

TRAIN = Path(__file__).resolve().parent / "train.py"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "action", choices=["run", "report", "accuracy", "rounding", "padding", "padding-report"]
    )
    parser.add_argument("--root", type=Path, default=Path("outputs/sweeps/bn_study"))
    parser.add_argument("--rounding-root", type=Path, default=Path("outputs/sweeps/bn_rounding"))
    parser.add_argument("--padding-root", type=Path, default=Path("outputs/sweeps/bn_padding"))
    parser.add_argument(
        "--padding-out", type=Path, default=Path("outputs/bn_padding"), help="runs.csv, cells.csv"
    )
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu", help="rounding only")
    parser.add_argument(
        "--conditions",
        nargs="*",
        choices=list(ROUNDING),
        help="rounding only; default: all the device has",
    )
    parser.add_argument("--seeds", type=int, help="default: 5 (rounding: 3)")
    parser.add_argument("--models", nargs="*", help="default: all of findings.MODELS")
    parser.add_argument("--sweeps", nargs="*", choices=list(PADDING_SWEEPS), help="padding only")
    parser.add_argument("--threads", type=int, help="torch threads (rounding may depend on it)")
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs/bn_study.md"))
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 3 if args.action in ("rounding", "padding") else 5
    quiet_lightning()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.action == "run":
        run_study(args.root, args.seeds, args.models)
        return 0
    if args.action == "rounding":
        train_all(args.rounding_root, rounding_runs(args.seeds, args.device, args.conditions))
        print(rounding_report(args.rounding_root))
        return 0
    if args.action == "padding-report":
        print(padding_report(args.padding_root, args.padding_out))
        return 0
    if args.action in ("accuracy", "padding"):  # each a sweep of its own, as a user runs it
        status = 0
        # accuracy: cifar_cnn at 1/4 width and the FNN control (resnet50_w16: --models)
        commands = (
            accuracy_commands(args.seeds, args.models or ["cifar_cnn_w4", "mnist_fnn"])
            if args.action == "accuracy"
            else padding_commands(args.seeds, args.sweeps)
        )
        for command in commands:
            print(" ".join(["python", "src/train.py", *command]), flush=True)
            code = subprocess.call([sys.executable, str(TRAIN), *command])
            if code == 2:  # bad input or data missing: every other command would repeat it
                return 2
            status = status or code
        return status
    text = (
        report(args.root) + "\n" + rounding_report(args.rounding_root) + "\n" + batchnorm_report()
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
