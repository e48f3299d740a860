"""Render a lip-synced talking-avatar MP4 (H.264 + AAC) from a portrait and a speech recording.

The audio may be WAV, FLAC, MP3 or OGG at any rate, channel count and bit depth. The video is exactly as long
as the audio. Frames stream to the encoder, so memory stays flat however long the audio is.
"""

from __future__ import annotations

import argparse
from avatarcast.core.errors import InputError
from avatarcast.offline.cascade import render_video
from avatarcast.offline.encoding import VideoEncoding


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portrait", required=True, metavar="P", help="portrait image or prepared avatar folder")
    p.add_argument("--audio", required=True, metavar="A", help="speech recording (WAV, FLAC, MP3, OGG)")
    p.add_argument("--transcript", default=None, metavar="T",
                   help="what is said: text, or a path to a .txt file (enables phone-accurate mouth shapes)")
    p.add_argument("--instruction", default=None, metavar="TEXT",
                   help="free-text direction, e.g. \"smile warmly and nod at the start\"")
    p.add_argument("--size", default="512x512", metavar="WxH",
                   help="output size, even sides, from 64x64 up to 1920x1080 (or 1080x1920)")
    p.add_argument("--fps", type=float, default=25.0, metavar="N", help="output frame rate, 1 to 60 (e.g. 25, 48)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mp4", help="output MP4 file")
    p.add_argument("--seed", type=int, default=0, help="seed for idle motion and blinks (renders are deterministic)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="parallel sub-clip workers (default: number of CPU cores)")
    p.add_argument("--executor", choices=["inline", "process", "ray"], default="process",
                   help="where sub-clips are rendered: in this process, a local process pool, or Ray")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="Ray cluster address for --executor ray (default: a local Ray bound to 127.0.0.1)")
    p.add_argument("--storyboard-out", default=None, metavar="FILE", help="write the storyboard as JSON")
    p.add_argument("--storyboard", default=None, metavar="FILE", help="render this storyboard instead of planning one")
    p.add_argument("--blueprint-out", default=None, metavar="FILE",
                   help="write a low-resolution, low-fps preview video of the keyframes (the blueprint)")
    p.add_argument("--joins-out", default=None, metavar="FILE",
                   help="write the frames where sub-clips join as JSON (for `avatarcast eval --joins FILE`)")
    p.add_argument("--director", choices=["rules", "llm"], default="rules", help="who writes the storyboard")
    p.add_argument("--llm-url", default=None, metavar="URL",
                   help="OpenAI-compatible base URL for --director llm (e.g. http://127.0.0.1:8000/v1)")
    p.add_argument("--llm-model", default=None, metavar="NAME", help="model name for --director llm")
    p.add_argument("--llm-send-portrait", action="store_true",
                   help="also show the model the portrait (an image part, for endpoints that accept images; a "
                        "text-only endpoint is asked again without it)")
    p.add_argument("--generator", choices=["parametric", "neural"], default="parametric",
                   help="sub-clip generator: parametric (CPU, real time) or neural (GPU, needs --model-dir)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="local diffusers folder of a first-last-frame video model, for --generator neural")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="sub-clip cache, so an interrupted render resumes (default: none)")
    p.add_argument("--crf", type=int, default=20, help="H.264 quality (lower is better)")
    p.add_argument("--preset", default="veryfast", help="H.264 speed preset")
    p.add_argument("--x264-params", default=None, metavar="K=V[:K=V...]",
                   help="extra x264 settings on top of the preset (default: a fast motion search on whole "
                        "macroblocks, me=dia:subme=1:partitions=none; '' for the preset's own)")
    p.add_argument("--keyframe-spacing", type=float, default=2.0, metavar="S",
                   help="longest gap between keyframes in seconds (the longest sub-clip)")
    p.add_argument("--allow-silence", action="store_true",
                   help="render even when the audio holds no speech (a silent, idling avatar)")
    p.add_argument("--no-progress", action="store_true", help="do not draw a progress bar")


def run(args: argparse.Namespace) -> int:
    if args.keyframe_spacing <= 0:
        raise InputError(f"--keyframe-spacing must be positive, got {args.keyframe_spacing:g}")
    x264 = {} if args.x264_params is None else {"x264_params": args.x264_params}
    encoding = VideoEncoding(preset=args.preset, crf=args.crf, **x264)
    result = render_video(
        args.portrait, args.audio, args.output, transcript=args.transcript, instruction=args.instruction,
        size=args.size, fps=args.fps, workers=args.workers, executor=args.executor, ray_address=args.ray_address,
        storyboard=args.storyboard, storyboard_out=args.storyboard_out, blueprint_out=args.blueprint_out,
        joins_out=args.joins_out,
        cache_dir=args.cache_dir, seed=args.seed, progress=not args.no_progress, generator=args.generator,
        model_dir=args.model_dir, allow_silence=args.allow_silence,
        encoding=encoding, keyframe_spacing_s=args.keyframe_spacing,
        director=args.director, llm_url=args.llm_url, llm_model=args.llm_model,
        llm_send_portrait=args.llm_send_portrait,
    )
    print(f"{result.output}: {result.size[0]}x{result.size[1]}, {result.n_frames} frames at {result.fps:g} fps, "
          f"{result.duration_s:.2f} s, {result.n_clips} clips"
          + (f" ({result.cache_hits} from the cache)" if result.cache_hits else "")
          + f"; rendered in {result.seconds:.1f} s (real-time factor {result.real_time_factor:.2f})")
    return 0
