"""The base of every error a user can fix (a config key, a file, a value): the CLI prints it as one line."""


class UserError(ValueError):
    """Bad input, reported with a message that names the problem; never a bug in ect itself."""
