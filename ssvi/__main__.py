"""Command line: ``python -m ssvi train [--preset cpu] [--FIELD VALUE ...]``.

Every :class:`ssvi.config.TrainConfig` field is a flag (``--density 0.05``, ``--removal snr``,
``--kl-warmup false``). ``--sparsity`` is accepted as 1 - density. Prints per-epoch metrics and the
final results; ``--results-path`` writes the results JSON, ``--run-dir`` enables checkpoints and
resume (run the same command again after an interruption).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing

from .config import TrainConfig
from .experiments import PRESETS, preset_config


def _parse_bool(s: str) -> bool:
    low = s.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _field_type(f: dataclasses.Field):
    hints = typing.get_type_hints(TrainConfig)
    t = hints[f.name]
    args = [a for a in typing.get_args(t) if a is not type(None)]
    base = args[0] if args else t
    return {bool: _parse_bool, int: int, float: float, str: str}.get(base)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ssvi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one configuration and print its metrics")
    t.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="scale preset (default: $SSVI_PRESET or 'cpu')")
    t.add_argument("--sparsity", type=float, default=None, help="1 - density")
    for f in dataclasses.fields(TrainConfig):
        typ = _field_type(f)
        if typ is None:
            continue
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, default=None,
                       help=f"default: preset value or {f.default!r}")
    return p


def main(argv=None) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("command")
    preset = args.pop("preset")
    sparsity = args.pop("sparsity")
    if sparsity is not None:
        if args.get("density") is not None:
            raise SystemExit("give either --sparsity or --density, not both")
        args["density"] = 1.0 - sparsity
    try:
        cfg = preset_config(preset, **args)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    from .trainer import train
    res = train(cfg)
    print(json.dumps({"metrics": res["metrics"], "parameters": res["parameters"],
                      "data": res["data"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
