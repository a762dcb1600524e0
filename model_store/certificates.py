"""Certificate signatures: a signing key with its X.509 certificate (and intermediates) in `model.sig`,
checked against trusted root certificates (`trust.roots`) instead of a list of public keys.

An organisation with a CA issues one certificate per publisher (a team, a CI pipeline) and the
servers trust the CA: a new publisher needs no change to any server, and the certificate names
who signed (`signed by certificate CN=...`). The bundle is the one `model_signing sign
certificate` writes, so its `verify certificate` checks ours and the other way round.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StoreError


def _certificates(path: Path, what: str) -> list[Any]:
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as e:
        raise StoreError(f"{what} {path}: cannot be read ({e.strerror})") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise StoreError(f"{what} {path}: not a PEM certificate ({str(e).splitlines()[0]})") from None
    return certs


def subject_of(cert: Any) -> str:
    """The certificate's subject as a person reads it (`CN=release,O=acme`)."""
    return str(cert.subject.rfc4514_string())


@dataclass(frozen=True)
class TrustRoot:
    """A trusted CA certificate file (one or more PEM certificates)."""

    path: Path
    fingerprint: str

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TrustRoot:
        p = Path(path)
        certs = _certificates(p, "trust root")
        if not certs:
            raise StoreError(f"trust root {p}: no certificate in the file")
        return cls(p, hashlib.sha256(p.read_bytes()).hexdigest())


@dataclass(frozen=True)
class SigningCertificate:
    """The signing key's certificate and the intermediates that lead to a root."""

    certificate: Path
    chain: tuple[Path, ...] = ()

    @classmethod
    def load(
        cls, key: Any, certificate: str | os.PathLike[str], chain: Sequence[str | os.PathLike[str]] = ()
    ) -> SigningCertificate:
        """Checks the files now (before any export), and that the certificate is `key`'s."""
        cert_path = Path(certificate)
        certs = _certificates(cert_path, "signing certificate")
        if len(certs) != 1:
            raise StoreError(f"signing certificate {cert_path}: expected one certificate, found {len(certs)}")
        if certs[0].public_key() != key.public_key():
            raise StoreError(f"signing certificate {cert_path}: is not the certificate of this private key")
        for p in chain:
            _certificates(Path(p), "certificate chain")
        return cls(cert_path, tuple(Path(p) for p in chain))

    def signer(self, key_path: Path, password: bytes | None) -> Any:
        """The package's certificate signer, with a password-protected key too (its own
        constructor takes none, so the key is opened by the key signer it extends)."""
        from cryptography import x509
        from model_signing._signing import sign_certificate, sign_ec_key

        signer = sign_certificate.Signer.__new__(sign_certificate.Signer)
        sign_ec_key.Signer.__init__(signer, key_path, password)  # type: ignore[arg-type]
        signer._signing_certificate = x509.load_pem_x509_certificate(self.certificate.read_bytes())
        chain = b"".join(p.read_bytes() for p in self.chain)
        signer._trust_chain = x509.load_pem_x509_certificates(chain) if chain else []
        return signer


def bundle_certificate(bundle: Any) -> Any | None:
    """The signing certificate a bundle carries (None for a key signature)."""
    from cryptography import x509

    chain = bundle.verification_material.x509_certificate_chain
    if chain is None or not chain.certificates:
        return None
    return x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)


def verify_certificate_bundle(bundle: Any, roots: Sequence[TrustRoot]) -> tuple[Any, str]:
    """The signed manifest if the bundle's certificate chains to one of `roots` and verifies the
    envelope, else why not."""
    from model_signing._signing import sign_certificate, sign_sigstore_pb

    cert = bundle_certificate(bundle)
    who = subject_of(cert) if cert is not None else "?"
    if not roots:
        return None, f"signed by certificate {who}, but this model trusts keys only (no trust.roots)"
    verifier = sign_certificate.Verifier([r.path for r in roots])
    try:
        return verifier.verify(sign_sigstore_pb.Signature(bundle)), ""
    except Exception as e:  # OpenSSL's chain error, a crypto error, or the key usage ValueError
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        return None, f"certificate {who} is not trusted ({text})"
