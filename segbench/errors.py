"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class SegbenchError(ValueError):
    """A bad value, a missing file or an impossible setting, explained in one line."""


def invalid_choice(what: str, value, choices) -> SegbenchError:
    """Build the standard 'bad value, here are the valid ones' error."""
    valid = ", ".join(str(c) for c in sorted(choices, key=str))
    return SegbenchError(f"{what}={value!r} is not valid; choose one of: {valid}")
