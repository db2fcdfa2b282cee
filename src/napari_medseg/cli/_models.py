"""``medseg models``: list, show, verify, add, remove, import-bundle and import-nnunet.

Exit codes: 0 success; 2 bad input (unknown name, invalid card, a file whose sha256 does not
match: the message names the file, the expected and the actual sha256); 1 internal error.

Search order (first match wins on a name clash): ``MEDSEG_MODELS`` folders, the user folder
(``MEDSEG_USER_MODELS`` or the platformdirs user data folder), the shipped models.
"""

from __future__ import annotations

import argparse
import json
import sys

_PRECEDENCE = "on a name clash the first folder wins: MEDSEG_MODELS, then the user folder, then shipped models"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser(
        "models",
        help="list, show, verify, add, remove and import models of the registry",
        description="Manage the model registry. Models are searched in the MEDSEG_MODELS folders "
        "(os.pathsep-separated), the user folder (MEDSEG_USER_MODELS or the platform's user data folder) and "
        f"the shipped models/ folder; {_PRECEDENCE}.",
    )
    commands = models.add_subparsers(dest="models_command", metavar="SUBCOMMAND")
    commands.required = True

    ls = commands.add_parser("list", help="list the models (and shadowed or unreadable folders)",
                             description=f"List every model on the search path; {_PRECEDENCE}.")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(func=run_list)

    show = commands.add_parser("show", help="print a model's card", description="Print a model's card and where it is.")
    show.add_argument("name", metavar="NAME", help="model name (or a model folder)")
    show.add_argument("--json", action="store_true", help="print the card as one JSON object")
    show.set_defaults(func=run_show)

    verify = commands.add_parser(
        "verify",
        help="check the sha256 of every file of one or all models",
        description="Check the sha256 of every file each card names; exit 2 naming the offending file on a mismatch.",
    )
    verify.add_argument("name", metavar="NAME", nargs="?", help="model name or folder (default: every model)")
    verify.add_argument("--load", action="store_true", help="also build each network and load its weights")
    verify.set_defaults(func=run_verify)

    add = commands.add_parser(
        "add",
        help="validate a model folder and copy it into the user folder",
        description="Validate the card, check every sha256 and copy the card and its files atomically into the "
        "user folder as <user folder>/<name>.",
    )
    add.add_argument("folder", metavar="FOLDER", help="model folder holding model.yaml (or model.json)")
    add.add_argument("--force", action="store_true", help="replace (or shadow) an existing model of the same name")
    add.set_defaults(func=run_add)

    remove = commands.add_parser("remove", help="delete a model from the user folder",
                                 description="Delete a model from the user folder (shipped and MEDSEG_MODELS models "
                                 "are never deleted).")
    remove.add_argument("name", metavar="NAME")
    remove.set_defaults(func=run_remove)

    bundle = commands.add_parser(
        "import-bundle",
        help="convert a MONAI bundle into a model folder",
        description="Convert a MONAI bundle (configs/metadata.json, configs/inference.json with a "
        "monai.networks.nets network_def, models/model.pt or model.safetensors) into a model folder with a card "
        "and model.safetensors. Nothing in the bundle is executed.",
    )
    bundle.add_argument("bundle", metavar="BUNDLE_DIR")
    bundle.add_argument("--out", metavar="FOLDER",
                        help="model folder to write (default: ./<name>; with --add and no --out, only the user folder)")
    bundle.add_argument("--name", help="registry name (default: the bundle's name)")
    bundle.add_argument("--add", action="store_true", help="also add the model to the user folder")
    bundle.add_argument("--force", action="store_true", help="overwrite --out / replace a model of the same name")
    bundle.set_defaults(func=run_import_bundle)

    nn = commands.add_parser(
        "import-nnunet",
        help="convert an nnU-Net v2 result folder into a model folder",
        description="Convert an nnU-Net v2 result folder (<trainer>__<plans>__<configuration> with dataset.json, "
        "plans.json and fold_K/checkpoint_final.pth) into a model folder with a generated card and the folds' "
        "weights in model.safetensors. Checkpoints are read weights-only; the network class comes from an "
        "allow-list. Needs the optional package nnunetv2.",
    )
    nn.add_argument("result_folder", metavar="FOLDER")
    nn.add_argument("--folds", nargs="+", metavar="K", help="folds to ensemble (default: every fold_K with the checkpoint)")
    nn.add_argument("--checkpoint", default="checkpoint_final.pth", help="checkpoint file in each fold (default checkpoint_final.pth)")
    nn.add_argument("--out", metavar="FOLDER",
                    help="model folder to write (default: ./<name>; with --add and no --out, only the user folder)")
    nn.add_argument("--name", help="registry name (default: <Dataset>_<configuration>)")
    nn.add_argument("--add", action="store_true", help="also add the model to the user folder")
    nn.add_argument("--force", action="store_true", help="overwrite --out / replace a model of the same name")
    nn.set_defaults(func=run_import_nnunet)


def _summary(model) -> dict:
    from napari_medseg.card_summary import model_summary  # the one card summary of every face

    return model_summary(model)


def run_list(args: argparse.Namespace) -> int:
    from napari_medseg.registry import Registry

    registry = Registry()
    scan = registry.scan()
    # cheap file-level checks (no hashing: 'medseg models verify' does that)
    file_problems = {str(m.folder): m.file_problems() for m in scan.models}
    if args.json:
        print(json.dumps({
            "models": [{**_summary(m), "file_problems": file_problems[str(m.folder)]} for m in scan.models],
            "shadowed": [{**_summary(hidden), "shadowed_by": str(winner.folder)} for hidden, winner in scan.shadowed],
            "problems": [{"folder": str(p), "error": why} for p, why in scan.problems],
            "search_path": [{"folder": str(p), "source": s.value} for p, s in scan.search_path],
            "precedence": _PRECEDENCE,
        }))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="models", caption=_PRECEDENCE)
    for column in ("name", "version", "task", "dims", "channels", "labels", "source", "folder"):
        table.add_column(column)
    for m in scan.models:
        s = _summary(m)
        table.add_row(s["name"], s["version"], s["task"], f"{s['spatial_dims']}D", ", ".join(s["channels"]),
                      ", ".join(s["labels"].values()), s["source"], s["folder"])
    for hidden, winner in scan.shadowed:
        s = _summary(hidden)
        table.add_row(s["name"], s["version"], s["task"], f"{s['spatial_dims']}D", ", ".join(s["channels"]),
                      ", ".join(s["labels"].values()), f"{s['source']} (shadowed by {winner.source.value} "
                      f"{winner.folder})", s["folder"], style="dim")
    console.print(table)
    if not scan.models:
        console.print("no models found; searched: " + ", ".join(f"{p} ({s.value})" for p, s in scan.search_path),
                      markup=False)
    for m in scan.models:
        if file_problems[str(m.folder)]:
            console.print(f"warning: model {m.name!r} ({m.folder}): " + "; ".join(file_problems[str(m.folder)])
                          + f"; it cannot be used until fixed (see 'medseg models verify {m.name}')",
                          markup=False, style="yellow")
    for path, why in scan.problems:
        console.print(f"warning: {path}: skipped: {why}", markup=False, style="yellow")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from napari_medseg.registry import Registry, load_model

    registry = Registry()
    model = load_model(args.name, registry=registry)
    scan = registry.scan()
    shadowed = [str(h.folder) for h, w in scan.shadowed if w.folder == model.folder]
    info = {
        "card": model.card.to_dict(),
        "source": model.source.value,
        "folder": str(model.folder),
        "card_file": str(model.card_path),
        "in_channels": model.card.in_channels,
        "out_channels": model.card.out_channels,
        "shadows": shadowed,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    from napari_medseg.card_summary import card_text  # what the napari Models widget shows too

    print(card_text(model, shadows=shadowed), end="")  # plain: a console would wrap long YAML lines
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from napari_medseg.errors import IntegrityError, MedsegError
    from napari_medseg.registry import Registry, load_model

    registry = Registry()
    models = [load_model(args.name, registry=registry)] if args.name else registry.list()
    failures = []
    for model in models:
        try:
            model.verify()
            if args.load:
                model.load_network()
        except MedsegError as exc:
            failures.append(f"{model.name}: {exc}")
            print(f"FAILED {model.name}: {exc}", file=sys.stderr)
        else:
            files = len(model.card.file_specs())
            print(f"ok {model.name} {model.card.version} ({files} file{'s' if files != 1 else ''}, "
                  f"sha256 {model.sha256[:12]}...){' loaded' if args.load else ''}")
    if not models:
        print("no models to verify")
    if failures:
        raise IntegrityError(f"{len(failures)} of {len(models)} model(s) failed: " + "; ".join(failures))
    return 0


def run_add(args: argparse.Namespace) -> int:
    from napari_medseg.registry import Registry

    registry = Registry()
    model = registry.add(args.folder, force=args.force)
    print(f"added {model.name} {model.card.version} to {model.folder}")
    winner = registry.get(model.name)
    if winner.folder != model.folder:
        print(f"note: {winner.source.value} model {winner.folder} has the same name and wins ({_PRECEDENCE})")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from napari_medseg.registry import Registry

    folder = Registry().remove(args.name)
    print(f"removed {args.name} ({folder})")
    return 0


def run_import_bundle(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_medseg.registry import Registry, add_monai_bundle, import_monai_bundle

    if args.out is None and args.add:
        model = add_monai_bundle(args.bundle, Registry(), name=args.name, force=args.force)
        print(f"imported {args.bundle} as {model.name} {model.card.version} into {model.folder}")
        return 0
    if args.out is None:
        from napari_medseg.registry import _bundle_name

        out = Path.cwd() / (args.name or _bundle_name(args.bundle))
    else:
        out = Path(args.out)
    model = import_monai_bundle(args.bundle, out, name=args.name, overwrite=args.force)
    print(f"imported {args.bundle} as {model.name} {model.card.version} in {model.folder} "
          f"(architecture {model.card.architecture.name}, sha256 {model.sha256})")
    if args.add:
        added = Registry().add(model.folder, force=args.force)
        print(f"added {added.name} to {added.folder}")
    return 0


def run_import_nnunet(args: argparse.Namespace) -> int:
    from pathlib import Path

    from napari_medseg.nnunet import add_nnunet, import_nnunet, nnunet_default_name
    from napari_medseg.registry import Registry

    kwargs = {"folds": args.folds, "checkpoint": args.checkpoint, "name": args.name}
    if args.out is None and args.add:
        model = add_nnunet(args.result_folder, Registry(), force=args.force, **kwargs)
        print(f"imported {args.result_folder} as {model.name} {model.card.version} into {model.folder}")
        return 0
    out = Path(args.out) if args.out is not None else Path.cwd() / (args.name or nnunet_default_name(args.result_folder))
    model = import_nnunet(args.result_folder, out, overwrite=args.force, **kwargs)
    print(f"imported {args.result_folder} as {model.name} {model.card.version} in {model.folder} "
          f"(folds {', '.join(model.card.nnunet['folds'])}, architecture {model.card.architecture.name}, "
          f"sha256 {model.sha256})")
    if args.add:
        added = Registry().add(model.folder, force=args.force)
        print(f"added {added.name} to {added.folder}")
    return 0
