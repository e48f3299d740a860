"""Loading any avatar by path: a prepared portrait folder, a prepared video avatar folder, a portrait image (prepared
on the fly) or the bundled default portrait. It sits above ``avatar.py`` and ``video_avatar.py`` (the video avatar
builds on the portrait avatar), so that neither has to import the other inside a function."""

from __future__ import annotations

from pathlib import Path

from avatarcast.face.avatar import DEFAULT_PORTRAIT, Avatar, prepare_avatar
from avatarcast.face.video_avatar import VideoAvatar


def load_avatar(path: str | Path | None) -> Avatar:
    """An avatar from a prepared folder (a portrait avatar, or a video avatar from ``prepare --video``), from a
    portrait image (prepared on the fly), or, for ``None``, from the bundled default portrait."""
    if path is None:
        avatar = prepare_avatar(DEFAULT_PORTRAIT)
        avatar.source = "default portrait"
        return avatar
    path = Path(path)
    if path.is_dir():
        if (path / "video_avatar.json").is_file():
            return VideoAvatar.load(path)
        return Avatar.load(path)
    return prepare_avatar(path)
