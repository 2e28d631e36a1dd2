"""Errors a user can cause, and the exit codes of every command (README: "Exit codes").

The CLI prints an error as one line and exits with its code.
"""

EXIT_OK = 0  # promoted, or nothing to do
EXIT_BAD_INPUT = 2  # bad input, config or usage: fix the input and run again
EXIT_ALREADY_RUNNING = 3  # another run holds the home's lock; nothing was changed
EXIT_INFRA = 4  # the environment failed (MLflow unreachable, disk full, unreadable model): retry once fixed
EXIT_NOT_PROMOTED = 5  # a candidate was trained and registered, but the gate refused it: champion unchanged


class InjectorError(Exception):
    """A problem with the user's input, config or environment (not a bug)."""

    exit_code = EXIT_BAD_INPUT


class AlreadyRunning(InjectorError):
    exit_code = EXIT_ALREADY_RUNNING


class InfraError(InjectorError):
    """The environment, not the input: a store that does not answer, a full disk, a corrupt model file."""

    exit_code = EXIT_INFRA
