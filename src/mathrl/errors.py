"""Errors the CLI reports as one clear line (no traceback unless --debug)."""


class MathrlError(Exception):
    """A user-facing problem: bad config, missing file, corrupt data, ..."""


class ConfigError(MathrlError):
    """The configuration is invalid; the message names the key."""


class DataError(MathrlError):
    """A dataset or log file is missing, empty or malformed; the message names it."""
