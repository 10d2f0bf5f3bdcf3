"""The one user-error type every command reports a problem with its input by: printed the same
way (`Error: ...`, no traceback) with exit code 2."""

from __future__ import annotations

import click

from curate.config import ConfigError
from curate.io.readers.contract import InputError
from curate.metadata import MetadataError

# what a user's input or files cause, wherever it is raised: a bad config, input, metadata or path
USER_ERRORS = (ConfigError, InputError, MetadataError, FileExistsError, FileNotFoundError)


class UserError(click.ClickException):
    """A problem with the user's input or files: printed without a traceback, exit code 2."""

    exit_code = 2


def user_errors(fn):
    """A command that reports USER_ERRORS as a UserError (a command raises UserError itself for the
    other failures it knows to be the user's, such as a trainer's ValueError)."""

    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as exc:
            raise UserError(str(exc)) from exc

    wrapper.__name__, wrapper.__doc__ = fn.__name__, fn.__doc__
    return wrapper
