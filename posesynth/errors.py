"""Errors for users' mistakes.  The CLI prints their message (no traceback) and exits 2."""


class PosesynthError(Exception):
    """Base class: a problem with the user's input that the message fully explains."""


class LayoutError(PosesynthError):
    """A keypoint layout is malformed or unknown."""


class DatasetError(PosesynthError):
    """A dataset file, image, annotation or mask is missing or malformed.

    ``kind`` names the sort of problem (e.g. ``"missing image"``, ``"truncated image"``,
    ``"duplicate image id"``) so that readers and ``posesynth check`` can count problems by kind.
    """

    def __init__(self, message: str, kind: str = "dataset") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self):  # keeps ``kind`` across processes (DataLoader workers)
        return (type(self), (str(self), self.kind))


class ConfigError(PosesynthError):
    """A configuration file or command-line override is invalid."""


class OutputError(PosesynthError):
    """An output file or folder cannot be written (read-only, a file where a folder should be, ...)."""
