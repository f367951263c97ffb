"""Exception types for bad user input.

`InputError` is raised for anything the user can fix (a wrong file, an empty mask, an output path that
would overwrite an input). Its message is a single line, meant to be printed as-is by the CLI before it
exits non-zero. It subclasses `ValueError` so generic callers that catch `ValueError` still work.
"""


class InputError(ValueError):
    """A user-facing input problem with a one-line, self-explanatory message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # force one line
