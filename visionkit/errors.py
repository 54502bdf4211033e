"""Errors a user can fix; the CLI prints them as one line (exit 2 for config/usage, 1 otherwise)."""


class VisionKitError(Exception):
    """Base of the errors that carry a user-facing, one-line message."""

    exit_code = 1


class ConfigError(VisionKitError):
    """A config file, key, type or value is wrong; the message names the file and key path."""

    exit_code = 2


class DataError(VisionKitError):
    """A data root, file or target is missing or invalid; the message names the path."""


class CheckpointError(VisionKitError):
    """A checkpoint is missing, corrupt or belongs to another model; the message names the path."""


class NonFiniteLossError(VisionKitError):
    """The loss became NaN or Inf; nothing holding it was saved."""


class TrainingInterrupted(VisionKitError):
    """SIGTERM or SIGINT stopped the run after a checkpoint was saved; ``--resume`` continues it."""

    exit_code = 130


class RunDirInUse(VisionKitError):
    """Another process is training in the run directory; the message names it."""
