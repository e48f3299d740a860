"""Errors that carry a message meant for the user: what was wrong and what to do about it."""


class AvatarcastError(Exception):
    """Base class for errors reported to the user without a traceback.

    The command line prints ``error: <message>`` and exits with ``exit_code``.
    """

    exit_code = 1


class InputError(AvatarcastError):
    """A file or argument given by the user cannot be used (missing, unreadable, wrong format)."""

    exit_code = 2


class FaceError(InputError):
    """The portrait has no usable face (none found, too small, cut off, index out of range)."""


class AudioError(InputError):
    """The audio cannot be used (empty, corrupt, unsupported format)."""


class StoryboardError(InputError):
    """A storyboard or instruction is invalid."""


class MissingDependencyError(AvatarcastError):
    """An optional extra is needed for this feature and is not installed."""

    exit_code = 3
