"""Errors a user can fix. The command line prints their message as one line and exits 2."""


class UserError(Exception):
    """Bad input: a recipe, a file, a path or data. The message names it and says what fixes it."""


class DataError(UserError):
    """Data that cannot be loaded or used as given."""


class ConfigError(UserError):
    """A recipe that does not validate."""
