"""avatarcast as a Pipecat video service (``pip install 'avatarcast[pipecat]'``; how-to in docs/pipecat.md).

```python
from avatarcast.integrations.pipecat import AvatarcastVideoService, InProcessAvatar, RemoteAvatar

avatar = AvatarcastVideoService(InProcessAvatar("portrait.jpg", size=(512, 512), fps=25))
# or, on an avatarcast server:  AvatarcastVideoService(RemoteAvatar("http://127.0.0.1:8080", token=TOKEN))
pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, avatar, transport.output(), assistant_agg])
```
"""

from __future__ import annotations

try:
    import pipecat  # noqa: F401
except ImportError:  # pragma: no cover - depends on the environment
    from avatarcast.core.errors import MissingDependencyError

    raise MissingDependencyError(
        "avatarcast.integrations.pipecat needs Pipecat: pip install 'avatarcast[pipecat]'") from None

from avatarcast.integrations.pipecat.inprocess import InProcessAvatar
from avatarcast.integrations.pipecat.media import AudioOut, AvatarEngine, SpeechFinished, SpeechStarted, VideoOut
from avatarcast.integrations.pipecat.remote import RemoteAvatar
from avatarcast.integrations.pipecat.service import AvatarcastVideoService, AvatarInstructionFrame

__all__ = [
    "AudioOut",
    "AvatarEngine",
    "AvatarInstructionFrame",
    "AvatarcastVideoService",
    "InProcessAvatar",
    "RemoteAvatar",
    "SpeechFinished",
    "SpeechStarted",
    "VideoOut",
]
