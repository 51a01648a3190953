"""Errors that are the user's to fix. The CLI prints their message alone (no traceback,
unless SPARSENET_DEBUG=1) and exits with status 2."""

from __future__ import annotations


class UserInputError(Exception):
    """Base: bad input the user can correct; the message names the value and what is allowed."""


# A reason that starts with one of these reads on from the key: `x.y is not a config key`.
PREDICATES = ("is", "has", "must", "cannot", "needs", "names")


class ConfigError(UserInputError, ValueError):
    """A config value out of its allowed set or range: (key, value, allowed).

    `ConfigError(key, value, reason, allowed)` reads `<key>=<value> <reason>; allowed:
    <allowed>`; without a value, `<key>: <reason>`. A component raises it with its own key
    (`alpha`); whoever built the component from the config adds where that lives with
    `error.at("regularizer.parts.sgl")`, giving `regularizer.parts.sgl.alpha=...`. Errors
    that concern no single key (a data folder with the wrong number of classes) are plain
    messages, `ConfigError("cifar10: ... has 9 class folders ...")`, which `at` leaves as
    they are. Values are shown as YAML writes them (true, null, 'text', [1, 2]).
    """

    NO_VALUE = object()

    def __init__(
        self,
        message_or_key: str,
        value: object = NO_VALUE,
        reason: str | None = None,
        allowed: str | None = None,
    ) -> None:
        self.key = message_or_key if reason is not None else None
        self.value = value
        self.reason = reason
        self.allowed = allowed
        self._message = None if reason is not None else message_or_key
        super().__init__(str(self))

    def __str__(self) -> str:
        if self._message is not None:
            return self._message
        shown = "" if self.value is ConfigError.NO_VALUE else f"={show_value(self.value)}"
        reason = str(self.reason)
        predicate = shown or reason.split(" ", 1)[0] in PREDICATES
        head = f"{self.key}{shown}" + (" " if predicate else ": ") + reason
        return head + (f"; allowed: {self.allowed}" if self.allowed else "")

    def at(self, path: str) -> ConfigError:
        """The same error, its key placed under the config node `path` (a plain message,
        about no single key, stays as it is)."""
        if not path or self._message is not None:
            return self
        moved = ConfigError(f"{path}.{self.key}", self.value, self.reason, self.allowed)
        moved.__cause__ = self.__cause__
        return moved

    def __reduce__(self):  # picklable across launcher processes despite the custom __init__
        if self._message is not None:
            return (type(self), (self._message,))
        return (type(self), (self.key, self.value, self.reason, self.allowed))


def show_value(value: object) -> str:
    """A config value as the user would write it in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float):
        return repr(value) if value == value and abs(value) != float("inf") else str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(show_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show_value(v)}" for k, v in value.items()) + "}"
    return str(value)


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
