"""Exception types for bad user input.

`InputError` is raised for anything the user can fix (a wrong file, an empty mask, an output path that
would overwrite an input). Its message is a single line, meant to be printed as-is by the CLI before it
exits non-zero. It subclasses `ValueError` so generic callers that catch `ValueError` still work.
"""


class InputError(ValueError):
    """A user-facing input problem with a one-line, self-explanatory message."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # force one line


def composition_message(err: BaseException) -> str:
    """One line from Hydra/OmegaConf's multi-line composition errors: what failed, and why."""
    first = str(err).splitlines()[0] if str(err) else type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause):
        lines = str(cause).splitlines()
        key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.strip().startswith("full_key:")), None)
        first = f"{first.rstrip('.')}: {lines[0]}" + (f" (key {key})" if key else "")
    if "Available options in" in str(err):
        options = [ln.strip() for ln in str(err).split("Available options in")[1].splitlines()[1:]
                   if ln.startswith("\t") and "=" not in ln]
        first += f"; available: {', '.join(options)}"
    return first
