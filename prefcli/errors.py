"""Errors that end a command with a one-line message and a documented exit code."""

EXIT_OK = 0
EXIT_PROBLEMS = 1  # ran, but reported problems (e.g. reject rate above --max-reject-rate)
EXIT_BAD_INPUT = 2  # bad input or usage
EXIT_LOCKED = 3  # another `prefcli run` holds the workdir lock


class PrefcliError(Exception):
    """Base class: message is the whole one-line error, exit_code the process exit code."""

    exit_code = EXIT_BAD_INPUT


class InputError(PrefcliError):
    """Malformed file, missing or mistyped column, empty text, bad option."""

    exit_code = EXIT_BAD_INPUT


class SchemaError(InputError):
    """The table does not satisfy the canonical pair schema."""


class ProblemsReported(PrefcliError):
    """The command ran to the end but found problems the user asked to fail on."""

    exit_code = EXIT_PROBLEMS


class LockHeld(PrefcliError):
    exit_code = EXIT_LOCKED
