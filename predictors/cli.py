"""`revatictl predictors ...` and `python -m revati.predictors ...`: train, list, eval, lomo.

  train [--sku SKU]... [--profile DIR]... [--no-vidur] [--exclude ORG/MODEL]... [--out DIR]
        build bundles: from the Vidur data (a100, h100, a40 by default) and/or from profile
        folders written by `python -m revati.predictors.profiler`
  list  [--json] [--bundles DIR]
  eval  --sku SKU --vidur-csv PATH [--json] [--bundles DIR]
        score a SKU's predictor on a Vidur-format mlp.csv: per operator count, median and p90
        absolute percentage error
  lomo  [--sku SKU]... [--json]
        leave-one-model-out on the Vidur data: the accuracy on models a bundle has not seen
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from revati.predictors import bundle as bundles
from revati.predictors import training, vidur
from revati.predictors.bundle import BundleError
from revati.predictors.dataset import Measured, read_profiles
from revati.predictors.registry import load_predictor
from revati.predictors.skus import UnknownSku, all_specs, canonical, spec


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="revatictl predictors", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("train", help="build SKU bundles")
    p.add_argument("--sku", action="append", default=[])
    p.add_argument("--profile", action="append", default=[], type=Path,
                   help="a profiler output folder (repeatable)")
    p.add_argument("--no-vidur", action="store_true", help="profiles only")
    p.add_argument("--exclude", action="append", default=[], metavar="ORG/MODEL",
                   help="leave a Vidur model out (to evaluate on it afterwards)")
    p.add_argument("--out", type=Path, default=bundles.BUNDLES_DIR,
                   help="bundles folder (default: the shipped one)")
    p = sub.add_parser("list", help="SKUs and their bundles")
    p.add_argument("--json", action="store_true")
    p.add_argument("--bundles", type=Path)
    p = sub.add_parser("eval", help="score a predictor on a Vidur mlp.csv")
    p.add_argument("--sku", required=True)
    p.add_argument("--vidur-csv", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--bundles", type=Path)
    p = sub.add_parser("lomo", help="leave-one-model-out accuracy on the Vidur data")
    p.add_argument("--sku", action="append", default=[])
    p.add_argument("--json", action="store_true")
    return ap


def _sku_spec(sku: str, profiles: list[Path]) -> tuple[str, dict[str, Any], str]:
    """A SKU's key, spec and where the spec came from: specs.json, or for a device that is not
    there (host-cpu) the spec.json the profiler wrote. A specs.json SKU takes from its profile
    what only a measurement knows: its slowdown after idle (`wake`, predictors/wake.py)."""
    try:
        key = canonical(sku)
        entry = spec(key)
        for d in profiles:
            measured = json.loads((d / "spec.json").read_text()) \
                if (d / "spec.json").exists() else {}
            if measured.get("wake"):
                return key, {**entry, "wake": measured["wake"]}, \
                    f"specs.json, wake from profile:{d.name}/spec.json"
        return key, entry, "specs.json"
    except UnknownSku:
        for d in profiles:
            if (d / "spec.json").exists():
                return sku.strip().lower(), json.loads((d / "spec.json").read_text()), \
                    f"profile:{d.name}/spec.json"
        raise


def cmd_train(args: argparse.Namespace) -> int:
    if args.profile and not args.sku:
        raise UsageError("--profile needs --sku (the SKU the profile was measured on)")
    for d in args.profile:
        if not d.is_dir():
            raise UsageError(f"no profile folder {d}")
    for sku in args.sku or sorted(vidur.SKU_DATA):
        key, sku_spec, spec_source = _sku_spec(sku, args.profile)
        measured: list[Measured] = []
        files: list[Path] = []
        if key in vidur.SKU_DATA and not args.no_vidur:
            unknown = set(args.exclude) - set(vidur.model_files(key))
            if unknown:
                raise UsageError(f"no Vidur model {sorted(unknown)} for {key}; known: "
                                 f"{', '.join(vidur.model_files(key))}")
            measured, files = vidur.training_data(key, exclude=args.exclude)
        for d in args.profile:
            measured += read_profiles(d)
            files += sorted(d.glob("*.csv"))
        if not measured:
            why = ("the profile folders hold no measurements" if args.profile else
                   "give --profile DIR")
            vidur_note = ("--no-vidur" if key in vidur.SKU_DATA and args.no_vidur else
                          "no Vidur data for this SKU")
            raise UsageError(f"no training data for {key}: {why} ({vidur_note})")
        b = training.build_bundle(key, sku_spec, measured, files, spec_source)
        out = bundles.bundle_dir(key, args.out)
        b.save(out)
        size = sum(p.stat().st_size for p in out.iterdir())
        rows = ", ".join(f"{f.name.lower()} {m.rows}" for f, m in sorted(b.models.items()))
        print(f"{key}: {rows} rows; attention "
              f"{'calibrated' if b.attention else 'uncalibrated'}; {size // 1024} KiB in {out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    names = dict.fromkeys([*all_specs(), *bundles.available(args.bundles)])
    for sku in names:
        path = bundles.bundle_dir(sku, args.bundles)
        row: dict[str, Any] = {"sku": sku, "bundle": None, "families": [], "created": None}
        if (path / "bundle.json").exists():
            b = bundles.Bundle.load(path)
            row.update(bundle=str(path), families=sorted(f.name for f in b.models),
                       created=b.provenance.get("created"), name=b.spec.get("name"))
        else:
            row["name"] = all_specs()[sku]["name"]
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for r in rows:
        what = (f"bundle ({', '.join(f.lower() for f in r['families'])}; {r['created']})"
                if r["bundle"] else "roofline only")
        print(f"{r['sku']:<10} {r['name']:<24} {what}")
    return 0


def _print_table(stats: dict[str, dict[str, Any]], extra: str = "") -> None:
    print(f"{'operator':<26} {'count':>6} {'median %':>9} {'p90 %':>8}{extra and '  ' + extra}")
    for op, s in stats.items():
        tail = f"  {s['worst_model']} {s['worst_model_median_ape']:.2f}" if extra else ""
        print(f"{op:<26} {s['count']:>6} {s['median_ape']:>9.2f} {s['p90_ape']:>8.2f}{tail}")


def cmd_eval(args: argparse.Namespace) -> int:
    if not args.vidur_csv.is_file():
        raise UsageError(f"no file {args.vidur_csv}")
    predictor = load_predictor(args.sku, args.bundles)
    name = "/".join(args.vidur_csv.resolve().parent.parts[-2:])
    measured = list(vidur.read_mlp_csv(args.vidur_csv, name, vidur.ARCHS.get(name, vidur.Arch())))
    stats = training.score(predictor, measured)
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{predictor.sku} on {args.vidur_csv} ({name}); predictions by source: "
          f"{dict(predictor.counts)}")
    _print_table(stats)
    return 0


def cmd_lomo(args: argparse.Namespace) -> int:
    skus = [canonical(s) for s in args.sku] or sorted(vidur.SKU_DATA)
    result = {sku: training.lomo(sku, spec(sku)) for sku in skus}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    for sku, stats in result.items():
        print(f"\n{sku}: leave-one-model-out over {vidur.data_dir() / 'compute' / sku}")
        _print_table(stats, "worst held-out model (median %)")
    return 0


COMMANDS = {"train": cmd_train, "list": cmd_list, "eval": cmd_eval, "lomo": cmd_lomo}


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.cmd](args)
    except (UsageError, UnknownSku, BundleError, vidur.DataMissing) as exc:
        print(f"revatictl predictors {args.cmd}: {exc}", file=sys.stderr)
        return 2
