"""The `modeldock` command: wiring only; the work lives in model_store and server modules."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from model_store import ModelStore, StoreError, VersionState, VersionStatus
from model_store.signing import SIGNATURE_NAME, SigningKey, TrustPolicy


def _age(created_at: str) -> str:
    try:
        then = dt.datetime.fromisoformat(created_at)
    except ValueError:
        return "?"
    seconds = (dt.datetime.now(dt.timezone.utc) - then).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def _row(store: ModelStore, s: VersionStatus) -> list[str]:
    m = s.manifest
    folder = store.path(s.name, s.version)
    size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    state = {
        VersionState.VALID: "verified",
        VersionState.PENDING: "pending",
        VersionState.REJECTED: "REJECTED",
    }[s.state]
    notes = s.reason if s.state is not VersionState.VALID else "; ".join(s.report.notes if s.report else [])
    return [
        s.name,
        str(s.version),
        ",".join(a.format for a in m.artifacts) if m else "-",
        " ".join(f"{k}={v:.4g}" for k, v in m.metrics.items()) if m else "-",
        _age(m.created_at) if m else "-",
        f"{size / 1024:.0f}K",
        state,
        notes,
    ]


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def _trust(args: argparse.Namespace) -> TrustPolicy | None:
    """`--trust-key`/`--trust-root` given: list and verify as a server requiring them would."""
    if not args.trust_key and not args.trust_root:
        return None
    return TrustPolicy.from_files(args.trust_key or [], roots=args.trust_root or [])


def _signing_key(path: Path, certificate: Path | None, chain: list[Path] | None) -> SigningKey:
    # A password on the command line would land in shell history and `ps`: the environment only.
    password = os.environ.get("MODELDOCK_SIGNING_KEY_PASSWORD") or None
    return SigningKey.load(path, password, certificate=certificate, chain=chain or ())


def cmd_ls(args: argparse.Namespace) -> int:
    store = ModelStore(args.store, trust=_trust(args))
    rows = [_row(store, s) for name in store.models() for s in store.statuses(name)]
    if not rows:
        print(f"no models in {store.location}")
        return 0
    print(_table(rows, ["MODEL", "VERSION", "FORMATS", "METRICS", "AGE", "SIZE", "STATE", "NOTES"]))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    store = ModelStore(args.store, trust_pickle=args.trust_pickle, trust=_trust(args))
    name, _, version = args.target.partition(":")
    versions = [version] if version else store.version_folders(name)
    if not versions:
        raise StoreError(f"model {name!r} has no versions in {store.location}")
    failed = 0
    for v in versions:
        report = store.verify(name, v)
        verdict = "ok" if report.ok else "FAILED"
        errors = ", ".join(f"{f} max error {e:.2g}" for f, e in report.max_errors.items())
        print(f"{name}:{v} {verdict}" + (f" ({errors})" if errors else ""))
        for line in report.problems + report.notes:
            print(f"  {line}")
        failed += not report.ok
    return 1 if failed else 0


def cmd_demo(args: argparse.Namespace) -> int:
    from model_store.demo import run_demo

    run_demo(args.store, epochs=args.epochs)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    import torch

    from model_store.checkpoint import load_checkpoint
    from model_store.manifest import ModelFactory
    from model_store.publish import check_formats
    from model_store.runtimes import build_model

    try:
        kwargs = json.loads(args.factory_kwargs)
        shape = [int(x) for x in args.input_shape.split(",")]
        metrics = {k: float(v) for k, v in (m.split("=", 1) for m in args.metric)}
    except ValueError as e:
        raise StoreError(f"bad argument: {e}") from None
    store = ModelStore(args.store, trust_pickle=args.trust_pickle)  # fail fast on a bad store path
    if (args.sign_cert or args.sign_chain) and not args.sign_key:
        raise StoreError("--sign-cert and --sign-chain need --sign-key")
    # And on a bad key or certificate, before exporting.
    key = _signing_key(args.sign_key, args.sign_cert, args.sign_chain) if args.sign_key else None
    formats = check_formats(tuple(args.formats.split(",")), args.trust_pickle)
    model = build_model(ModelFactory(args.factory, kwargs))
    ckpt = load_checkpoint(args.checkpoint)
    is_checkpoint = isinstance(ckpt.get("model"), dict)  # CheckpointManager's file, else a state_dict
    model.load_state_dict(ckpt["model"] if is_checkpoint else ckpt)
    if is_checkpoint:
        metrics = {**ckpt.get("metrics", {}), **metrics}
    example = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    version = store.publish(
        args.name,
        model,
        example_inputs=example,
        metrics=metrics,
        formats=formats,
        model_factory=args.factory,
        factory_kwargs=kwargs,
        sign=key,
    )
    landed = [a["format"] for a in store.manifest(args.name, version)["artifacts"]]
    refused = [f for f in formats if f not in landed]  # an export torch could not produce (logged)
    signed = f", signed by {key.signer_name}" if key else ""
    print(f"published {args.name}:{version} to {store.location} ({', '.join(landed)}{signed})")
    if refused:
        print(f"refused formats: {', '.join(refused)} (see the warning above)")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    store = ModelStore(args.store)
    name, _, version = args.target.partition(":")
    if not version:
        raise StoreError(f"sign needs NAME:VERSION, got {args.target!r}")
    key = _signing_key(args.key, args.cert, args.chain)
    store.sign(name, version, key)
    print(f"signed {name}:{version} in {store.location} by {key.signer_name} ({SIGNATURE_NAME})")
    return 0


def cmd_import_mar(args: argparse.Namespace) -> int:
    from model_store.mar_import import import_mar

    store = ModelStore(args.store)
    formats = tuple(args.formats.split(",")) if args.formats else None
    report = import_mar(
        store, args.archive, name=args.name, example_input=args.example_input, model_class=args.model_class,
        formats=formats,
    )  # fmt: skip
    files = f", data files {report.data_files}" if report.data_files else ""
    print(f"imported {args.archive} as {report.name}:{report.version} ({', '.join(report.formats)}{files})")
    for step in report.todo:
        print(f"  to do: {step}")
    print(f"serve it with this in serve.yaml:\n{report.serve_yaml()}", end="")
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    from server.admin_client import cmd_rollout as run

    return run(args)


def cmd_models(args: argparse.Namespace) -> int:
    from server.admin_client import cmd_models as run

    return run(args)


def cmd_serve(args: argparse.Namespace) -> int:
    from server.app import serve

    return serve(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="modeldock", description="Serve PyTorch models from a verified store.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--store", default="models", help="store folder (default ./models)")
        return sp

    add("demo", "train the digits demo and publish two versions").add_argument("--epochs", type=int, default=12)

    def trust_arguments(sp: argparse.ArgumentParser) -> None:
        what = "whose signatures are required (repeatable): check as such a server would"
        sp.add_argument("--trust-key", action="append", type=Path, help=f"PEM public key {what}")
        sp.add_argument("--trust-root", action="append", type=Path, help=f"PEM CA certificate {what}")

    trust_arguments(add("ls", "list models and versions"))
    v = add("verify", "verify NAME or NAME:VERSION")
    v.add_argument("target")
    v.add_argument("--trust-pickle", action="store_true")
    trust_arguments(v)
    sig = add("sign", "sign a version already in the store (model.sig, OpenSSF model signing)")
    sig.add_argument("target", help="NAME:VERSION")
    sig.add_argument(
        "--key", type=Path, required=True, help="ECDSA private key (PEM); password: $MODELDOCK_SIGNING_KEY_PASSWORD"
    )
    sig.add_argument("--cert", type=Path, help="the key's X.509 certificate (PEM), for servers that trust a CA")
    sig.add_argument("--chain", action="append", type=Path, help="intermediate certificate (PEM), repeatable")
    pub = add("publish", "publish a checkpoint or state_dict file as a new version")
    pub.add_argument("checkpoint", type=Path)
    pub.add_argument("--name", required=True)
    pub.add_argument("--factory", required=True, help="module:callable that builds the model")
    pub.add_argument("--factory-kwargs", default="{}", help="JSON keyword arguments for the factory")
    pub.add_argument("--input-shape", required=True, help="example input shape, e.g. 1,1,8,8")
    pub.add_argument(
        "--formats",
        default="onnx,torchscript,state_dict",
        help="comma-separated: onnx, torchscript, state_dict, pickle, exported (torch.export), aoti (AOTInductor)",
    )
    pub.add_argument("--metric", action="append", default=[], help="NAME=VALUE, repeatable")
    pub.add_argument("--trust-pickle", action="store_true")
    pub.add_argument("--sign-key", type=Path, help="ECDSA private key (PEM) that signs the version")
    pub.add_argument("--sign-cert", type=Path, help="the signing key's X.509 certificate (PEM)")
    pub.add_argument("--sign-chain", action="append", type=Path, help="intermediate certificate (PEM), repeatable")
    mar = add("import-mar", "publish a TorchServe model archive (.mar) as a new verified version")
    mar.add_argument("archive", type=Path)
    mar.add_argument("--name", help="model name in the store (default: the archive's)")
    mar.add_argument("--example-input", type=Path, help=".npy or .pt: a batch of model inputs for the golden outputs")
    mar.add_argument(
        "--model-class", help="eager archives: package.module:Class, your installed copy of the model file"
    )
    mar.add_argument("--formats", help="eager archives: formats to publish (default state_dict)")
    from server.config import add_serve_arguments

    add_serve_arguments(add("serve", "serve the store over the Open Inference Protocol v2"))
    from server.admin_client import add_model_arguments, add_rollout_arguments

    add_rollout_arguments(sub.add_parser("rollout", help="status, promote or abort a model's rollout on a server"))
    add_model_arguments(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    handlers = {
        "demo": cmd_demo,
        "ls": cmd_ls,
        "verify": cmd_verify,
        "publish": cmd_publish,
        "sign": cmd_sign,
        "import-mar": cmd_import_mar,
        "serve": cmd_serve,
        "rollout": cmd_rollout,
        **dict.fromkeys(("models", "load", "unload", "pin"), cmd_models),
    }
    try:
        code = handlers[args.command](args)
    except StoreError as e:
        print(f"modeldock: error: {e}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
