"""Errors a user can cause. The CLI prints them as one line and exits non-zero."""


class InjectorError(Exception):
    """A problem with the user's input, config or environment (not a bug)."""

    exit_code = 2


class AlreadyRunning(InjectorError):
    exit_code = 3
