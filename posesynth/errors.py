"""Errors for users' mistakes.  The CLI prints their message (no traceback) and exits 2."""


class PosesynthError(Exception):
    """Base class: a problem with the user's input that the message fully explains."""


class LayoutError(PosesynthError):
    """A keypoint layout is malformed or unknown."""


class DatasetError(PosesynthError):
    """A dataset file, image, annotation or mask is missing or malformed."""


class ConfigError(PosesynthError):
    """A configuration file or command-line override is invalid."""
