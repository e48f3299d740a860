"""Detect the face in a portrait and save a reusable avatar folder (image, face mesh, regions, JSON metadata).

`render` and `serve` accept either a portrait image or such a folder; a prepared folder loads in milliseconds.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("portrait", metavar="PORTRAIT", help="portrait image (PNG, JPEG, WebP, BMP)")
    p.add_argument("-o", "--output", required=True, default=argparse.SUPPRESS, metavar="AVATAR_DIR",
                   help="folder to write the avatar to (created if needed; its avatar files are overwritten)")
    p.add_argument("--face", type=int, default=argparse.SUPPRESS, metavar="N",
                   help="which face to use when there are several, counting from the left (0 = leftmost); "
                        "default: the largest face")


def run(args: argparse.Namespace) -> int:
    from avatarcast.pipeline.avatar import prepare_avatar

    avatar = prepare_avatar(args.portrait, face_index=getattr(args, "face", None))
    avatar.save(args.output)
    yaw, pitch, roll = avatar.head_pose_deg
    width, height = avatar.size
    print(f"avatar saved to {args.output}: {width}x{height} image, face box {list(avatar.face_box)}, "
          f"head pose yaw {yaw:+.1f} pitch {pitch:+.1f} roll {roll:+.1f} degrees, "
          f"{len(avatar.landmarks)} landmarks, {len(avatar.triangles)} warp triangles")
    return 0
