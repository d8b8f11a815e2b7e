"""The one exception type that the CLI turns into a single readable error line.

Anything raised as `UserError` is the user's to fix (a bad params value, a missing or
malformed file); everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """An error the user can fix; its message names the file or key and what was expected."""
