"""Errors a user can fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad configuration or missing input. The message names the key and what is allowed."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)
