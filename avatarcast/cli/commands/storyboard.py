"""Storyboard tools: write the storyboard's JSON Schema, or validate a storyboard file before rendering it.

A storyboard is what the director decides (segments, emotions, timed actions, gaze and blinks). `avatarcast render
--storyboard-out FILE` writes one; edit it and render it with `--storyboard FILE`.
"""

from __future__ import annotations

import argparse
import json

from avatarcast.direction.storyboard import load_storyboard, storyboard_json_schema, write_json_schema


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="storyboard_command", metavar="ACTION", required=True)
    schema = sub.add_parser("schema", help="write the storyboard JSON Schema (default: to stdout)")
    schema.add_argument("-o", "--output", default=None, metavar="FILE", help="file to write instead of stdout")
    validate = sub.add_parser("validate", help="check a storyboard JSON file and print a summary")
    validate.add_argument("file", metavar="FILE", help="storyboard JSON file")


def run(args: argparse.Namespace) -> int:
    if args.storyboard_command == "schema":
        if args.output:
            write_json_schema(args.output)
        else:
            print(json.dumps(storyboard_json_schema(), indent=2))
        return 0
    sb = load_storyboard(args.file)
    print(f"ok: {len(sb.segments)} segments, {len(sb.actions)} actions, {len(sb.blink_times_s)} blinks, "
          f"{sb.duration_s:.2f} s")
    return 0
