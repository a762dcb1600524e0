"""What signing adds per version: at publish (signing) and at the first load (the check).

    python -m bench.signing [--rounds 3]

For the digits-sized demo MLP and a ~100 MB model (one 5000x5000 linear layer), each published
with onnx and state_dict: the time of a publish with and without `sign=`, and of the store's
first verification of the version with and without a trust policy (the server's once-per-version
check; a fresh store each time, so its hash cache starts cold as a server's does), and the
signing step alone as publish runs it (publish's own time varies by more than it). The medians of
`--rounds` (taking turns) are printed with the difference, which is what a user pays for signatures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from model_store import ModelStore
from model_store.signing import SigningKey, TrustPolicy, sign_folder


def _keys(folder: Path) -> tuple[SigningKey, TrustPolicy]:
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (folder / "k.pub").write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return SigningKey.load(folder / "k.pem"), TrustPolicy.from_files([folder / "k.pub"])


def _models() -> dict[str, tuple[torch.nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    demo = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    big = torch.nn.Sequential(torch.nn.Linear(5000, 5000))  # 25M float32 parameters: 100 MB
    return {"demo": (demo.eval(), torch.randn(4, 64)), "100MB": (big.eval(), torch.randn(4, 5000))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-signing-") as tmp:
        root = Path(tmp)
        key, trust = _keys(root)
        print(
            f"{'model':8} {'publish':>10} {'signed':>10} {'+':>8} {'1st load':>10} {'trusted':>10} {'+':>8}"
            f" {'signing':>9}"
        )
        for name, (model, example) in _models().items():
            times: dict[str, list[float]] = {"plain": [], "signed": [], "load": [], "load_trust": [], "sign": []}
            for r in range(args.rounds):
                store = ModelStore(root / f"s{name}{r}")
                order = [("plain", None), ("signed", key)]
                for kind, sign in order if r % 2 else order[::-1]:  # turns: neither gets the warm-up
                    t0 = time.perf_counter()
                    v = store.publish(name, model, example_inputs=example, formats=("onnx", "state_dict"), sign=sign)
                    times[kind].append(time.perf_counter() - t0)
                    for label, policy in (("load", None), ("load_trust", trust)):
                        if (kind == "signed") != (policy is not None):
                            continue
                        fresh = ModelStore(store.root, trust=policy)  # cold hash cache, like a server's start
                        t0 = time.perf_counter()
                        status = fresh.status(name, v)
                        times[label].append(time.perf_counter() - t0)
                        assert status.report is not None and status.report.ok, status.reason
                # The signing step alone, as publish runs it (the version's sha256s already known).
                folder = store.path(name, store.versions(name)[0])
                t0 = time.perf_counter()
                sign_folder(folder, key, f"{name}/x", store.hashes)
                times["sign"].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            print(
                f"{name:8} {med['plain']:9.3f}s {med['signed']:9.3f}s {med['signed'] - med['plain']:+7.3f}s "
                f"{med['load']:9.3f}s {med['load_trust']:9.3f}s {med['load_trust'] - med['load']:+7.3f}s"
                f" {med['sign'] * 1000:7.1f}ms"
            )


if __name__ == "__main__":
    main()
