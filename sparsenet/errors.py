"""Errors that are the user's to fix. The CLI prints their message alone (no traceback,
unless SPARSENET_DEBUG=1) and exits with status 2."""


class UserInputError(Exception):
    """Base: bad input the user can correct; the message names the value and what is allowed."""


class ConfigError(UserInputError, ValueError):
    """A config value out of its allowed set or range."""
