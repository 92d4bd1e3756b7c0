"""What an init scheme did to a model, layer by layer. Same config groups as train.py.

    python src/init_report.py model=resnet50 init=bias_normal
    python src/init_report.py model=cifar_cnn dataset=cifar10 init=bias_uniform bias_scale=up

Prints, per layer with parameters: name, type, weight shape, weight mean/std and fraction of
exact zeros, bias mean/std. Nothing is trained and nothing is written.
"""

import sys

import torch
from hydra.errors import HydraException

from zeroinit.config import UserError, build
from zeroinit.run import build_net, compose


def layer_rows(net: torch.nn.Module) -> list[dict]:
    rows = []
    for name, layer in net.named_modules():
        weight = getattr(layer, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        bias = getattr(layer, "bias", None)
        w = weight.detach().float()
        row = {
            "layer": name,
            "type": type(layer).__name__,
            "shape": "x".join(map(str, w.shape)),
            "w_mean": w.mean().item(),
            "w_std": w.std().item() if w.numel() > 1 else 0.0,
            "w_zero": (w == 0).float().mean().item(),
            "b_mean": None,
            "b_std": None,
        }
        if isinstance(bias, torch.Tensor):
            b = bias.detach().float()
            row["b_mean"] = b.mean().item()
            row["b_std"] = b.std().item() if b.numel() > 1 else 0.0
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    def num(v):
        return "-" if v is None else f"{v:+.4f}"

    header = ["layer", "type", "weight shape", "w mean", "w std", "w zeros", "b mean", "b std"]
    body = [
        [
            r["layer"],
            r["type"],
            r["shape"],
            num(r["w_mean"]),
            f"{r['w_std']:.4f}",
            f"{100 * r['w_zero']:.1f}%",
            num(r["b_mean"]),
            "-" if r["b_std"] is None else f"{r['b_std']:.4f}",
        ]
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
    fmt = lambda cells: "  ".join(  # noqa: E731 - left-align text, right-align numbers
        c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


def main(argv: list[str]) -> int:
    try:
        cfg = compose(*argv)
        # Not read: the dataset's config declares its shape, so no files are needed here.
        data = build(cfg.dataset, batch_size=cfg.batch_size, seed=cfg.seed)
        net = build_net(cfg, data)
    except (UserError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rows = layer_rows(net)
    n_params = sum(p.numel() for p in net.parameters())
    scheme = build(cfg.init)
    print(
        f"{cfg.model.name} on {cfg.dataset.name} {list(data.input_shape)}, "
        f"init={scheme.name} (weight {scheme.weight}, bias {scheme.bias}, "
        f"bias_scale {scheme.bias_scale:g}, scope {scheme.scope}), seed {cfg.seed}: "
        f"{len(rows)} layers with parameters, {n_params:,} parameters"
    )
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
