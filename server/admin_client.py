"""`modeldock rollout|models|load|unload|pin ...`: an operator's verbs over a running server's
admin routes (docs/rollout.md, docs/model-control.md). One line on stderr when it refuses."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any


def _server_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    p.add_argument("--admin-key", default=None, help="admin key (default: env MODELDOCK_ADMIN_API_KEY)")


def add_rollout_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["status", "promote", "abort"])
    p.add_argument("model")
    _server_arguments(p)


def add_model_arguments(sub: Any) -> None:
    _server_arguments(sub.add_parser("models", help="every model of a running server's store: state, versions"))
    for verb, text in (("load", "serve a model of the store (or one version of it)"), ("unload", "stop serving it")):
        p = sub.add_parser(verb, help=f"{text}, on a running server")
        p.add_argument("model")
        p.add_argument("--version", type=int, default=None)
        _server_arguments(p)
    p = sub.add_parser("pin", help="make a version the one that answers unversioned requests (--unpin: the policy's)")
    p.add_argument("model")
    p.add_argument("version", type=int, nargs="?")
    p.add_argument("--unpin", action="store_true")
    _server_arguments(p)


def cmd_rollout(args: argparse.Namespace) -> int:
    path = f"/v2/models/{args.model}/rollout" + ("" if args.action == "status" else f"/{args.action}")
    return _call(args, path, "GET" if args.action == "status" else "POST")


def cmd_models(args: argparse.Namespace) -> int:
    if args.command == "models":
        return _call(args, "/v2/repository/index", "GET")
    base = f"/v2/repository/models/{args.model}"
    if args.command == "pin":
        if args.unpin:
            return _call(args, f"{base}/unpin", "POST")
        if args.version is None:
            print("modeldock: error: pin needs a version (or --unpin)", file=sys.stderr)
            return 2
        return _call(args, f"{base}/versions/{args.version}/pin", "POST")
    if args.version is not None:
        return _call(args, f"{base}/versions/{args.version}/{args.command}", "POST")
    return _call(args, f"{base}/{args.command}", "POST")


def _call(args: argparse.Namespace, path: str, method: str) -> int:
    key = args.admin_key or os.environ.get("MODELDOCK_ADMIN_API_KEY", "")
    req = urllib.request.Request(args.url.rstrip("/") + path, method=method, headers={"x-admin-key": key})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            body = json.loads(r.read())
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        with contextlib.suppress(ValueError):
            detail = json.loads(detail).get("error", detail)
        if e.code == 404 and detail.startswith("no route"):
            detail = "the server has no admin routes (start it with admin_api_key)"
        print(f"modeldock: error: {args.url} refused ({e.code}): {detail}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(f"modeldock: error: cannot reach {args.url}: {reason}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=1))
    return 0
