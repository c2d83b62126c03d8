"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""

import argparse


class SegbenchError(ValueError):
    """A bad value, a missing file or an impossible setting, explained in one line."""


def invalid_choice(what: str, value, choices) -> SegbenchError:
    """Build the standard 'bad value, here are the valid ones' error."""
    valid = ", ".join(str(c) for c in sorted(choices, key=str))
    return SegbenchError(f"{what}={value!r} is not valid; choose one of: {valid}")


def one_line(err: BaseException) -> str:
    """The line a user reads for ``err``: a worker's wrapped error unwrapped, an OSError with its path."""
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror or err}{where}"
    text = str(err)
    if "Original Traceback" in text:  # raised in a DataLoader worker: torch wraps the message and traceback
        text = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines) if lines else type(err).__name__


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose mistakes are a ``SegbenchError`` (one line, exit 2), not usage text plus an error."""

    def error(self, message: str):
        raise SegbenchError(f"{self.prog}: {message} (see {self.prog} -h)")


def at_least(lowest: int):
    """An argparse type: an integer of at least ``lowest``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"{value} must be at least {lowest}")
        return value

    return parse
