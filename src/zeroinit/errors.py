"""Errors a user can fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad configuration or missing input. The message names the key and what is allowed."""


class SweepError(UserError):
    """A problem that every run of a sweep would hit the same way (its dataset's files, say):
    a -m sweep stops at the first run that meets it and says it once, instead of once per run
    (zeroinit.sweep.stop_sweep)."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)
