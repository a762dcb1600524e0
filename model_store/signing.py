"""Signed versions: an OpenSSF model-signing signature (`model.sig`) over every file of a version.

The signature is the package's format (a Sigstore bundle holding a DSSE envelope over an in-toto
statement listing each file's sha256), so `model_signing verify key` checks our versions and we
check folders its `sign key` made. Both directions use the sha256s the store already computes
(`HashCache`): signing and checking add no second read of the weights. The crypto calls go
through the package's key signer and verifier (model-signing is pinned to the release whose
module layout this relies on).

A check turns every way a signature can fail into a reason a person can act on: `unsigned`,
`signed by an untrusted key <fingerprint>`, `signature does not cover file x`,
`file x changed after signing`.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .certificates import SigningCertificate, TrustRoot, bundle_certificate, subject_of, verify_certificate_bundle
from .errors import StoreError
from .hashes import HashCache

SIGNATURE_NAME = "model.sig"
# Files in a version folder that are never part of it: the signature itself, and the record a
# bucket's mirror keeps of where each file came from (model_store.s3_mirror).
NOT_SIGNED = (SIGNATURE_NAME, ".objects.json")
# What model_signing's own CLI leaves out of a signature by default; listed so that a check by
# its `verify` hashes exactly the files we signed.
_CLI_IGNORED = (".git", ".gitattributes", ".github", ".gitignore")


def fingerprint(public_pem: bytes) -> str:
    """sha256 of the key's PEM SubjectPublicKeyInfo: the `hint` model_signing puts in a bundle."""
    return hashlib.sha256(public_pem).hexdigest()


def short(fp: str) -> str:
    return fp[:16]


def _public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        key.public_bytes(encoding=serialization.Encoding.PEM, format=serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _ec_key_problem(key: Any) -> str | None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, ec.EllipticCurvePublicKey):
        return f"a {type(key).__name__.lstrip('_')}, not an elliptic-curve (ECDSA) key"
    if key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        return f"curve {key.curve.name} (model signing takes P-256, P-384 or P-521)"
    return None


@dataclass(frozen=True)
class PublicKey:
    """A trusted key: where it was read from and its fingerprint."""

    path: Path
    pem: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pem)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        """Read a PEM public key; StoreError naming the file when it is missing or not such a key."""
        from cryptography.hazmat.primitives import serialization

        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise StoreError(f"trust key {p}: cannot be read ({e.strerror})") from None
        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, TypeError) as e:
            raise StoreError(f"trust key {p}: not a PEM public key ({str(e).splitlines()[0]})") from None
        problem = _ec_key_problem(key)
        if problem:
            raise StoreError(f"trust key {p}: {problem}")
        return cls(p, _public_pem(key))


@dataclass(frozen=True)
class SigningKey:
    """An ECDSA private key (PEM) that signs versions, with its certificate where given (then the
    signature carries the certificate and chain, for servers that trust a CA); checked when made,
    before any export."""

    path: Path
    password: bytes | None = None
    certificate: SigningCertificate | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        password: str | bytes | None = None,
        *,
        certificate: str | os.PathLike[str] | None = None,
        chain: Sequence[str | os.PathLike[str]] = (),
    ) -> SigningKey:
        """`certificate`: the key's X.509 certificate (PEM); `chain`: intermediates up to a root."""
        from cryptography.hazmat.primitives import serialization

        p = Path(path)
        pw = password.encode() if isinstance(password, str) else password
        try:
            data = p.read_bytes()
        except OSError as e:
            raise StoreError(f"signing key {p}: cannot be read ({e.strerror})") from None
        try:
            key = serialization.load_pem_private_key(data, pw)
        except (ValueError, TypeError) as e:
            raise StoreError(f"signing key {p}: not a usable PEM private key ({str(e).splitlines()[0]})") from None
        problem = _ec_key_problem(key.public_key())
        if problem:
            raise StoreError(f"signing key {p}: {problem}")
        if chain and certificate is None:
            raise StoreError("a certificate chain needs the signing certificate too")
        cert = SigningCertificate.load(key, certificate, chain) if certificate is not None else None
        return cls(p, pw, cert)

    @property
    def signer_name(self) -> str:
        """Who the signature names: `key <fingerprint>` or `certificate <subject>`."""
        if self.certificate is not None:
            from cryptography import x509

            cert = x509.load_pem_x509_certificate(self.certificate.certificate.read_bytes())
            return f"certificate {subject_of(cert)}"
        return f"key {short(self.fingerprint)}"

    @property
    def fingerprint(self) -> str:
        from cryptography.hazmat.primitives import serialization

        key = serialization.load_pem_private_key(self.path.read_bytes(), self.password)
        return fingerprint(_public_pem(key.public_key()))


@dataclass(frozen=True)
class TrustPolicy:
    """Keys and root certificates whose signatures are accepted; `required`: an unsigned version
    is rejected."""

    keys: tuple[PublicKey, ...]
    required: bool = True
    roots: tuple[TrustRoot, ...] = ()

    @classmethod
    def from_files(
        cls,
        paths: Sequence[str | os.PathLike[str]],
        required: bool = True,
        roots: Sequence[str | os.PathLike[str]] = (),
    ) -> TrustPolicy:
        if required and not paths and not roots:
            raise StoreError("a required signature needs at least one trusted key or root certificate")
        return cls(tuple(PublicKey.load(p) for p in paths), required, tuple(TrustRoot.load(p) for p in roots))

    @property
    def identity(self) -> tuple[Any, ...]:
        """What a cached verdict depends on: the keys, the roots, whether a signature is required."""
        return (tuple(k.fingerprint for k in self.keys), self.required, tuple(r.fingerprint for r in self.roots))


def version_files(folder: Path) -> list[str]:
    """Every file of a version folder (relative POSIX paths) that a signature must cover."""
    files = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if rel in NOT_SIGNED or p.is_dir():
            continue
        files.append(rel)
    return files


def sign_folder(folder: Path, key: SigningKey, subject: str, hashes: HashCache) -> str:
    """Sign every file of `folder`; the signature lands whole (written aside, then renamed).

    `subject` (`name/version`) is the statement's name, so a signature moved to another version
    is named as such. Returns the key's fingerprint.
    """
    from model_signing import manifest
    from model_signing._hashing.hashing import Digest
    from model_signing._signing import sign_ec_key, signing

    items = []
    for rel in version_files(folder):
        digest = bytes.fromhex(hashes.sha256(folder / rel))
        items.append(manifest.FileManifestItem(path=pathlib.PurePosixPath(rel), digest=Digest("sha256", digest)))
    kind = manifest._FileSerialization("sha256", False, [Path(p) for p in (SIGNATURE_NAME, *_CLI_IGNORED)])
    payload = signing.Payload(manifest.Manifest(subject, items, kind))
    if key.certificate is not None:
        signer = key.certificate.signer(key.path, key.password)
    else:  # typed `str`, but handed straight to cryptography's loader, which takes bytes
        signer = sign_ec_key.Signer(key.path, key.password)  # type: ignore[arg-type]
    signature = signer.sign(payload)
    fd, tmp = tempfile.mkstemp(prefix=".sig-", dir=folder.parent)
    os.close(fd)
    try:
        signature.write(Path(tmp))
        os.replace(tmp, folder / SIGNATURE_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return key.fingerprint


@dataclass(frozen=True)
class SignatureCheck:
    """The outcome: `problem` rejects the version; `note` says what was found when it passes."""

    problem: str = ""
    note: str = ""


def check_folder(folder: Path, policy: TrustPolicy, hashes: HashCache, name: str) -> SignatureCheck:
    """Check `folder`'s signature (for version `name`, `m/3`) against the trusted keys and roots
    without reading a weight file twice."""
    sig_path = folder / SIGNATURE_NAME
    if not sig_path.is_file():
        if policy.required:
            return SignatureCheck("signature: unsigned (no model.sig; this model requires a signature)")
        return SignatureCheck(note="unsigned (signatures not required)")
    bundle, problem = _read_bundle(sig_path)
    if bundle is None:
        return SignatureCheck(f"signature: {SIGNATURE_NAME} is not a model signature ({problem})")
    try:
        cert = bundle_certificate(bundle)
    except ValueError as e:  # a chain whose DER does not parse
        return SignatureCheck(f"signature: {SIGNATURE_NAME} is not a model signature (certificate: {e})")
    if cert is not None:
        expected, problem = verify_certificate_bundle(bundle, policy.roots)
        signer = f"certificate {subject_of(cert)}"
    else:
        key = bundle.verification_material.public_key
        hint = key.hint if key is not None else ""
        candidates = [k for k in policy.keys if k.fingerprint == hint] if hint else list(policy.keys)
        if not candidates:
            return SignatureCheck(f"signature: signed by an untrusted key {short(hint) or '(no key hint)'}")
        expected, problem = _verified(bundle, candidates)
        signer = f"key {short(hint or candidates[0].fingerprint)}"
    if expected is None:
        return SignatureCheck(f"signature: {problem}")
    problems = _compare(folder, expected, hashes, name)
    if problems:
        return SignatureCheck("signature: " + "; ".join(problems))
    return SignatureCheck(note=f"signed by {signer}")


def _read_bundle(path: Path) -> tuple[Any, str]:
    from model_signing._signing import sign_sigstore_pb

    try:
        return sign_sigstore_pb.Signature.read(path).bundle, ""
    except Exception as e:  # json, base64 and betterproto raise many types on a damaged file
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def _verified(bundle: Any, keys: list[PublicKey]) -> tuple[Any, str]:
    """The signed manifest if one of `keys` verifies the envelope, else why not."""
    from model_signing._signing import sign_ec_key, sign_sigstore_pb

    why = ""
    for key in keys:
        with tempfile.NamedTemporaryFile(suffix=".pem") as f:  # the package's verifier reads a path
            f.write(key.pem)
            f.flush()
            verifier = sign_ec_key.Verifier(Path(f.name))
        try:
            return verifier.verify(sign_sigstore_pb.Signature(bundle)), ""
        except Exception as e:  # a bad signature surfaces as ValueError or a crypto error
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'invalid'}"
    if len(keys) == 1 and keys[0].fingerprint == bundle.verification_material.public_key.hint:
        return None, f"the signature does not verify with key {short(keys[0].fingerprint)} ({why})"
    return None, f"signed by an untrusted key (no trusted key verifies it: {why})"


def _compare(folder: Path, expected: Any, hashes: HashCache, subject: str) -> list[str]:
    kind = expected.serialization_type
    if kind.get("method") != "files" or kind.get("hash_type") != "sha256":
        return [f"signed as {kind.get('method')}/{kind.get('hash_type')}; this server checks files/sha256 signatures"]
    name = expected.model_name
    if "/" in name and name != subject:  # ours carry name/version; a CLI signature, its folder name
        return [f"the signature is for {name}, not {subject}"]
    signed = {rd.identifier: rd.digest.digest_value.hex() for rd in expected.resource_descriptors()}
    problems = []
    present = version_files(folder)
    for rel in present:
        if rel not in signed:
            problems.append(f"signature does not cover file {rel}")
    for rel, want in sorted(signed.items()):
        path = folder / rel
        if rel not in present:
            problems.append(f"file {rel} was signed but is missing")
            continue
        try:
            got = hashes.sha256(path)
        except OSError as e:
            problems.append(f"file {rel} unreadable ({e.strerror})")
            continue
        if got != want:
            problems.append(f"file {rel} changed after signing")
    return problems
