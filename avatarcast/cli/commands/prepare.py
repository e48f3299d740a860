"""Prepare a reusable avatar folder: from a portrait (face mesh, regions) or from video of the person talking.

`render` and `serve` accept either a portrait image or such a folder; a prepared folder loads in milliseconds.
"""

from __future__ import annotations

import argparse

from avatarcast.core.errors import InputError
from avatarcast.face.avatar import prepare_avatar
from avatarcast.face.video_avatar import prepare_video_avatar


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("portrait", metavar="PORTRAIT", nargs="?", default=None,
                   help="portrait image (PNG, JPEG, WebP, BMP); or give --video instead")
    p.add_argument("--video", nargs="+", metavar="CLIP", default=None,
                   help="build a video avatar from recordings of one person talking to the camera (10 s to 10 min "
                        "in all, one camera setting; several clips and jump cuts are fine): the footage plays as the "
                        "base and the person's own mouths are re-synthesised for new speech")
    p.add_argument("-o", "--output", required=True, default=argparse.SUPPRESS, metavar="AVATAR_DIR",
                   help="folder to write the avatar to (created if needed; its avatar files are overwritten)")
    p.add_argument("--face", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="which face to use when there are several, counting from the left (0 = leftmost); "
                        "default: the largest face (portraits only)")


def run(args: argparse.Namespace) -> int:
    if (args.portrait is None) == (args.video is None):
        raise InputError("give either a PORTRAIT image or --video CLIP [CLIP ...]")
    if args.video is not None:
        avatar = prepare_video_avatar(args.video, args.output)
        meta = avatar.meta
        width, height = avatar.frame_size
        print(f"video avatar saved to {args.output}: {meta['usable_s']:.1f} s of usable footage at "
              f"{avatar.fps:.2f} fps ({width}x{height}), base performance {len(avatar.playlist)} frames, "
              f"mouth bank {len(avatar.bank_shape)} mouths")
        return 0

    avatar = prepare_avatar(args.portrait, face_index=getattr(args, "face", None))
    avatar.save(args.output)
    yaw, pitch, roll = avatar.head_pose_deg
    width, height = avatar.size
    print(f"avatar saved to {args.output}: {width}x{height} image, face box {list(avatar.face_box)}, "
          f"head pose yaw {yaw:+.1f} pitch {pitch:+.1f} roll {roll:+.1f} degrees, "
          f"{len(avatar.landmarks)} landmarks, {len(avatar.triangles)} warp triangles")
    return 0
