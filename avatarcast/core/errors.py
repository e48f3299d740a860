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


class InvalidValueError(InputError, ValueError):
    """A value given to the library is out of range or malformed (a size, a rate, a shape, a JSON number).

    It is also a ``ValueError``, so callers that catch ``ValueError`` (pydantic validators among them) keep working.
    """


class StateError(AvatarcastError, RuntimeError):
    """A call came when the object cannot take it (not started yet, already closed)."""


class RenderFailedError(AvatarcastError, RuntimeError):
    """Rendering or encoding failed, or gave other than what was asked (a worker died, a clip came out short)."""


class ConnectionLostError(AvatarcastError, ConnectionError):
    """The other end closed the connection, or refused it (the message says which and what to check)."""


class MissingDependencyError(AvatarcastError):
    """An optional extra is needed for this feature and is not installed."""

    exit_code = 3
