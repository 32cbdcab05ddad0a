"""The one exception type for bad input from the user.

Anything the user can fix (a flag out of range, a missing folder, a corrupt image, a checkpoint for
another configuration) raises :class:`UserError` with a message that names the flag or the file.
``main.py`` prints that message on one line and exits with status 2, without a traceback.
"""


class UserError(Exception):
    """Bad input that the user can fix; the message names the flag or file at fault."""
