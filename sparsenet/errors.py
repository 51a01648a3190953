"""Errors that are the user's to fix. The CLI prints their message alone (no traceback,
unless SPARSENET_DEBUG=1) and exits with status 2."""

from __future__ import annotations


class UserInputError(Exception):
    """Base: bad input the user can correct; the message names the value and what is allowed."""


class ConfigError(UserInputError, ValueError):
    """A config value out of its allowed set or range."""


class OutputError(UserInputError):
    """A result could not be written (read-only folder, full disk). Writes are atomic, so the
    file's previous version, if any, is still there."""


class CheckpointError(UserInputError):
    """A checkpoint that is refused: it holds more than tensors and plain data (it could run
    code when unpickled), or it is not a sparsenet checkpoint."""


class RunDiverged(FloatingPointError):
    """The loss became NaN or infinite. Not a UserInputError: the run ends with status
    `failed` in its metrics.json (stage, epoch, reason) and a sweep goes on with its other
    runs."""

    def __init__(self, stage: str, epoch: int, reason: str) -> None:
        super().__init__(f"{stage} epoch {epoch}: {reason}")
        self.stage, self.epoch, self.reason = stage, epoch, reason

    def __reduce__(self):  # picklable across launcher processes despite the custom __init__
        return (type(self), (self.stage, self.epoch, self.reason))
