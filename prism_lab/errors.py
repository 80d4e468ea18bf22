"""User-facing errors. The CLI turns any PrismError into one line on stderr and exit code 2."""

from __future__ import annotations


class PrismError(Exception):
    """An error a researcher can act on: the message names the file, the field and what was expected."""


class ConfigError(PrismError):
    """A grid, search space or stage config is malformed."""


class DataError(PrismError):
    """A dataset file or row is malformed (names the file and the row)."""


class CheckpointError(PrismError):
    """A checkpoint directory is missing, incomplete or incompatible."""


class LedgerError(PrismError):
    """A ledger file that cannot be read, is empty, or has a newer schema (names the file)."""


class StageFailed(PrismError):
    """A stage run failed; the message says which run and where its log is."""
