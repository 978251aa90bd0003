"""Command line: ``python -m ssvi train [--preset cpu] [--FIELD VALUE ...]``.

Every :class:`ssvi.config.TrainConfig` field is a flag (``--density 0.05``, ``--removal snr``,
``--kl-warmup false``). ``--sparsity`` is accepted as 1 - density. Prints per-epoch lines and the
final results; ``--results-path`` writes the results JSON, ``--run-dir`` enables checkpoints and
resume (run the same command again after an interruption).

Errors are one line on stderr (``error: ...``), exit status 2 for bad input, 1 for a failed run
(e.g. divergence), 130 for Ctrl-C; ``--debug`` or SSVI_DEBUG=1 shows the traceback.
``--progress false`` hides the progress bars, ``--quiet`` every line but the results.
``--hp NAME=VALUE`` (repeatable) sets a hyper-parameter of a Table-2 baseline (``--method vd``,
``sbp``, ``aeb``, ``mbnn``), e.g. ``--hp aeb_lr_sparse=0.01``; VALUE is read as JSON (numbers,
true/false, null, lists) and otherwise taken as a string. It is stored in ``extra``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
import warnings

from . import errors
from .config import TrainConfig
from .experiments import PRESETS, preset_config

try:
    from .config import CHOICES
except ImportError:  # older config module
    from .config import ADDITIONS, ALLOCATIONS, DATASETS, METHODS, MODELS, REGROW_SIGMA, REMOVALS
    CHOICES = {"dataset": DATASETS, "model": MODELS, "method": METHODS,
               "allocation": ALLOCATIONS, "removal": REMOVALS, "addition": ADDITIONS,
               "regrow_sigma": REGROW_SIGMA}


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


def _help(f: dataclasses.Field) -> str:
    """The flag's help: what it is, its allowed values, its default."""
    doc = f.metadata.get("doc") or ""
    if f.name in CHOICES:
        allowed = "one of " + ", ".join(CHOICES[f.name])
    else:
        rule = f.metadata.get("rule")
        allowed = rule.describe(f.name) if rule is not None else ""
    default = f.default if f.default is not dataclasses.MISSING else None
    parts = [p for p in (doc, allowed) if p]
    return "; ".join(parts) + f" (default: preset value or {default!r})"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2)."""

    def error(self, message):
        print(f"error: {' '.join(message.split())}; see {self.prog} --help", file=sys.stderr)
        raise SystemExit(errors.EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m ssvi", description=__doc__,
                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    t = sub.add_parser("train", help="train one configuration and print its metrics")
    t.add_argument("--preset", default=None, metavar="{" + ",".join(sorted(PRESETS)) + "}",
                   help="scale preset, one of " + ", ".join(sorted(PRESETS))
                        + " (default: $SSVI_PRESET or 'cpu')")
    t.add_argument("--sparsity", type=float, default=None, help="1 - density")
    t.add_argument("--quiet", action="store_true",
                   help="print only the final results (no per-epoch lines, no progress bars)")
    t.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    t.add_argument("--hp", action="append", default=None, metavar="NAME=VALUE",
                   help=_hp_help())
    for f in dataclasses.fields(TrainConfig):
        typ = _field_type(f)
        if typ is None:
            continue
        metavar = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else None
        t.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, default=None,
                       metavar=metavar, help=_help(f))
    return p


def _hp_help() -> str:
    """--hp's help: every baseline hyper-parameter name with its default."""
    import dataclasses as dc

    from .baselines import METHOD_NAMES, method_class
    groups = []
    for name in METHOD_NAMES:
        hp = method_class(name).Hparams()
        groups.append(f"{name}: " + ", ".join(f"{name}_{f.name}={getattr(hp, f.name)!r}"
                                               for f in dc.fields(hp)))
    return ("hyper-parameter of the baseline method, repeatable, e.g. --hp aeb_lr_sparse=0.01 "
            "(VALUE as JSON, else a string); the names with their defaults: "
            + "; ".join(groups))


def parse_hp(items) -> dict:
    """``["name=value", ...]`` (``--hp``) as a dict; values as JSON, else strings."""
    out = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise errors.ConfigError(f"--hp {item!r} is not NAME=VALUE; write e.g. "
                                     "--hp vd_lr=0.001")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[name] = value
    return out


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


def _train(argv) -> int:
    args = vars(build_parser().parse_args(argv))
    args.pop("command")
    args.pop("debug")
    quiet = args.pop("quiet")
    preset = args.pop("preset")
    sparsity = args.pop("sparsity")
    hp = parse_hp(args.pop("hp"))
    if hp:
        args["extra"] = hp
    if sparsity is not None:
        if args.get("density") is not None:
            raise errors.ConfigError("give either --sparsity or --density, not both")
        args["density"] = 1.0 - sparsity   # TrainConfig canonicalises it (0.9 -> 0.1)
    if preset is not None and preset not in PRESETS:
        raise errors.ConfigError(f"unknown preset {preset!r}; choose one of "
                                 f"{', '.join(sorted(PRESETS))}")
    if quiet:
        args["progress"] = False
    try:
        cfg = preset_config(preset, **args)
    except ValueError as e:   # config modules that predate ssvi.errors
        if isinstance(e, errors.SSVIError):
            raise
        raise errors.ConfigError(errors.one_line(e)) from e
    from .trainer import train
    res = train(cfg, log=None if quiet else print)
    print(json.dumps({"metrics": res["metrics"], "parameters": res["parameters"],
                      "data": res["data"]}, indent=2))
    return 0


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0, 1 failure, 2 bad input, 130 Ctrl-C)."""
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return errors.cli_main(_train, argv)


if __name__ == "__main__":
    sys.exit(main())
