"""The signature policy: a model's `trust:` section (docs/security.md, "Signed versions")."""

from __future__ import annotations

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic.dataclasses import dataclass

from model_store import StoreError
from model_store.certificates import TrustRoot
from model_store.signing import PublicKey, TrustPolicy

from .settings_base import _CHECKED, _Checked


@dataclass(config=_CHECKED)
class TrustConfig(_Checked):
    """Whose signatures a model's versions need; no keys nor roots: signatures are not checked."""

    keys: list[str] = Field(default_factory=list)
    """PEM public keys (ECDSA) whose `model.sig` is accepted; several at once for a rotation."""
    roots: list[str] = Field(default_factory=list)
    """PEM CA certificates: a signature whose certificate chains to one of them is accepted."""
    required: bool | None = None
    """Reject unsigned versions; unset: true when keys or roots are given. A bad signature is
    always rejected."""

    @field_validator("keys", "roots")
    @classmethod
    def _files_load(cls, value: list[str], info: ValidationInfo) -> list[str]:
        load = PublicKey.load if info.field_name == "keys" else TrustRoot.load
        for path in value:
            try:
                load(path)  # names the file: missing, unreadable, not a key / certificate
            except StoreError as e:
                raise ValueError(str(e)) from None
        return value

    @model_validator(mode="after")
    def _required_has_keys(self) -> TrustConfig:
        if self.required and not self.keys and not self.roots:
            raise ValueError("trust.required: true needs at least one key in trust.keys or a root in trust.roots")
        return self

    def policy(self) -> TrustPolicy | None:
        if not self.keys and not self.roots:
            return None
        return TrustPolicy.from_files(self.keys, self.required is not False, self.roots)
