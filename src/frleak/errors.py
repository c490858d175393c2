"""One exception type for every error a user can cause (bad file, bad option, bad config).

The CLI prints these as one clear line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class FrleakError(Exception):
    """A user-facing error: the message names the file, option or key at fault and what to do."""


class ConfigError(FrleakError):
    """A configuration value or key is wrong (unknown key, bad type, bad value)."""


class DataError(FrleakError):
    """A dataset is unusable: missing folder, no images, unreadable image, overlapping splits."""


class CheckpointError(FrleakError):
    """A checkpoint cannot be loaded: missing file, wrong keys or shapes, unsafe content."""
