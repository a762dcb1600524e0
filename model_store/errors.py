"""Error types of the model store: each message says what is wrong and what to do about it."""

from __future__ import annotations


class StoreError(Exception):
    """A store operation cannot proceed (bad path, unknown model or version, bad argument)."""


class ManifestError(StoreError):
    """A manifest is missing, unparsable or does not follow the store format."""


class ExportMismatch(StoreError):
    """An exported artifact does not reproduce the eager model's golden outputs."""


class UntrustedPickle(StoreError):
    """A full-model pickle was asked for without ``trust_pickle=True``."""


class NewerManifest(ManifestError):
    """A manifest of a newer schema than this code reads: rejected, never misread as pending."""


class ExportRefused(StoreError):
    """torch could not produce one format (torch.export, AOTInductor): the publish lands the others."""


class NotRunnableHere(StoreError):
    """An artifact compiled for another machine (torch build, CPU ISA, device): try the next one."""
