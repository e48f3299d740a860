"""Measure a rendered video with independent detectors: lip sync, identity, seams and jitter.

Nothing is read from the renderer: the video is decoded and analysed as any video would be, with dlib's face
detector, 68-point landmarks and face descriptor (the [eval] extra; a different model family from the renderer's).
Lip sync compares the inner-lip opening per frame with the speech loudness per frame (Pearson correlation, best lag
in -5..+5 frames, positive = video late) and the mouth's opening in silence against speech; identity is the face
descriptor distance of closed-mouth frames to the portrait (dlib: < 0.6 usually the same person); seams compare the
frame-to-frame change at sub-clip joins with the change inside clips; jitter is the high-frequency motion of
landmarks that should be still, in pixels. Head pose and brow height are measured per frame.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from avatarcast.core.errors import InputError
from avatarcast_bench.evaluation import IDENTITY_MAX_FRAMES, LAG_RANGE_FRAMES, REDETECT_EVERY_FRAMES
from avatarcast_bench.evaluation import evaluate_video, load_joins, write_report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("video", metavar="VIDEO", help="video to evaluate (MP4 or anything FFmpeg decodes)")
    p.add_argument("--portrait", required=True, metavar="P",
                   help="the portrait the avatar was made from (image or prepared avatar folder)")
    p.add_argument("--audio", default=None, metavar="A", help="speech to compare against (default: the video's audio)")
    p.add_argument("--json", default=None, metavar="FILE", help="write the metrics as JSON (- for standard output)")
    p.add_argument("--series", action="store_true", help="include the per-frame series in the JSON")
    p.add_argument("--report", default=None, metavar="PNG", help="write a PNG report")
    joins = p.add_mutually_exclusive_group()
    joins.add_argument("--joins-every", type=int, default=None, metavar="N",
                       help="sub-clips are N frames long: joins at frames N, 2N, ... (default: no seam figures)")
    joins.add_argument("--joins", default=None, metavar="FILE",
                       help="JSON list of the first frame of each sub-clip, as written by render")
    p.add_argument("--redetect-every", type=int, default=REDETECT_EVERY_FRAMES, metavar="N",
                   help="re-detect the face every N frames (it is tracked in between, and re-detected when lost)")
    p.add_argument("--max-lag", type=int, default=LAG_RANGE_FRAMES, metavar="N",
                   help="lip-sync lags searched: -N..+N frames")
    p.add_argument("--identity-frames", type=int, default=IDENTITY_MAX_FRAMES, metavar="N",
                   help="closed-mouth frames compared with the portrait")


def _check_file(path: str, what: str) -> None:
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} not found: {p}; check the path")


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def run(args: argparse.Namespace) -> int:
    _check_file(args.video, "video")
    _check_file(args.portrait, "portrait")
    if args.audio is not None:
        _check_file(args.audio, "audio file")
    if args.redetect_every < 1 or args.max_lag < 0 or args.identity_frames < 1:
        raise InputError("--redetect-every and --identity-frames must be at least 1, --max-lag at least 0")
    joins = load_joins(args.joins) if args.joins else None
    evaluation = evaluate_video(
        args.video, args.portrait, args.audio, joins=joins, joins_every_frames=args.joins_every,
        redetect_every=args.redetect_every, max_lag=args.max_lag, identity_frames=args.identity_frames,
    )
    out = sys.stderr if args.json == "-" else sys.stdout  # keep stdout pure JSON for `--json -`

    def say(line: str) -> None:
        print(line, file=out)

    m = evaluation.metrics
    ls, ident, seams, jit = m["lipsync"], m["identity"], m["seams"], m["jitter"]
    video = m["video"]
    say(f"video: {video['n_frames']} frames, {video['width']}x{video['height']} at {video['fps']:.2f} fps, "
          f"face in {100 * video['face_fraction']:.1f}% of frames ({m['timing']['frames_per_s']:.0f} frames/s)")
    say(f"lip sync: correlation {_fmt(ls['correlation'])} at lag 0, best lag {ls['best_lag_frames']} frames "
          f"(correlation {_fmt(ls['best_lag_correlation'])}; + = video late); within speech "
          f"{_fmt(ls['correlation_in_speech'])}")
    say(f"mouth opening: speech {_fmt(ls['open_speech'])}, silence {_fmt(ls['open_silence'])}, "
          f"silence/speech {_fmt(ls['silence_ratio'])}")
    say(f"identity: distance to portrait mean {_fmt(ident['mean'])}, max {_fmt(ident['max'])} over "
          f"{ident['frames_used']} closed-mouth frames (same person below {ident['same_person_below']})")
    if seams["joins"]:
        say(f"seams: {seams['joins']} joins, max change at joins / median inside clips {_fmt(seams['ratio'], 2)} "
              f"(landmark motion {_fmt(seams['landmark_ratio'], 2)})")
    say(f"jitter: still points {_fmt(jit['still_px'])} px, eye corners {_fmt(jit['eye_corners_px'])} px, "
          f"outline {_fmt(jit['outline_px'])} px")
    pose = m["pose"]
    say("head pose p5..p95: " + ", ".join(
        f"{k.replace('_deg', '')} {_fmt(pose[k]['p5'], 1)}..{_fmt(pose[k]['p95'], 1)} deg" for k in pose)
        + f"; brow height median {_fmt(m['brows']['median'])}")
    if args.json:
        if args.json == "-":
            json.dump(evaluation.to_dict(args.series), sys.stdout, indent=2)
            print()
        else:
            evaluation.write_json(args.json, include_series=args.series)
    if args.report:
        write_report(evaluation, args.report)
    return 0
