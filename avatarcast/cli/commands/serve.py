"""Run the live server: TTS speech pushed over a WebSocket becomes a lip-synced avatar streamed over WebRTC.

One process serves the REST API (sessions), the WebSocket ingest, WHEP-style WebRTC negotiation and the viewer
page (which doubles as an OBS Browser Source). With no arguments it streams the bundled default avatar; --demo
loops a bundled speech clip into it so the avatar talks at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from avatarcast.core.errors import InputError
from avatarcast.core.realtime import check_priority, check_worker_nice
from avatarcast.direction.llm import LLMConfig
from avatarcast.live.cors import CorsPolicy
from avatarcast.live.load import check_idle_hold_at
from avatarcast.live.logs import limit_repeated_log_lines
from avatarcast.live.outputs.whip import check_whip_token, check_whip_url
from avatarcast.live.cushion import parse_start_cushion
from avatarcast.live.security import OriginPolicy, check_bind, check_public_url, tls_context
from avatarcast.live.server import ServerConfig, run_server
from avatarcast.live.session import LiveGenerator, check_fps, parse_size

MAX_VIEWERS_DEFAULT = 50
"""Viewers per session by default: 50 aiortc viewers of one session cost the server well under one core on the
2-core test machine (docs/benchmarks.md); more can be allowed up to ``MAX_VIEWERS_LIMIT``."""
MAX_VIEWERS_LIMIT = 1000


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (0.0.0.0 exposes the server to the network: needs --tls-cert/--tls-key, or "
                        "--allow-plain-http behind a TLS reverse proxy)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (0 = any free port)")
    p.add_argument("--avatar", default=None, metavar="PORTRAIT_OR_DIR",
                   help="portrait image or prepared avatar folder (default: the bundled portrait)")
    p.add_argument("--size", default="512x512", metavar="WxH", help="video size")
    p.add_argument("--fps", type=float, default=25.0, help="video frame rate")
    p.add_argument("--demo", action="store_true",
                   help="loop the bundled speech clip (with pauses) into the default session")
    p.add_argument("--token", default=None,
                   help="admin token for the REST API (default: a random token, printed at start)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="where the tokens are written (mode 0600) when standard output is not a terminal "
                        "(default: $XDG_RUNTIME_DIR or ~/.local/state, avatarcast-PORT.json); the output then "
                        "shows the URLs with the tokens left out")
    p.add_argument("--print-tokens", action=argparse.BooleanOptionalAction, default=None,
                   help="print the tokens in the start-up lines (default: only when standard output is a terminal)")
    p.add_argument("--public", action="store_true", help="the default session can be viewed without a token")
    p.add_argument("--max-sessions", type=int, default=4, help="most sessions at once (the default one included)")
    p.add_argument("--max-viewers", type=int, default=MAX_VIEWERS_DEFAULT,
                   help="most WebRTC (WHEP) viewers per session; each frame is encoded once for all of them, a "
                        "viewer costs its packets' sending and encryption (docs/benchmarks.md, bench viewers)")
    p.add_argument("--max-buffer-ms", type=float, default=60000.0,
                   help="speech audio a session buffers ahead of playback (a TTS answer pushed faster than real "
                        "time waits here, and an interrupt drops it at once); beyond it the ingest stops reading "
                        "(TCP backpressure)")
    p.add_argument("--max-message-kb", type=int, default=256, help="largest WebSocket message accepted, in KiB")
    p.add_argument("--instruction", default=None, help="standing instruction for the default session's director")
    p.add_argument("--director", choices=["rules", "llm"], default="rules",
                   help="who plans the sessions' gestures and emotions: the rule-based director, or also an LLM "
                        "(asked in the background once per utterance with its words, timings and prosody; its plan "
                        "replaces the rules' for what has not been shown yet when it comes in time, and never "
                        "delays a frame; docs/live-direction.md)")
    p.add_argument("--llm-url", default=None, metavar="URL",
                   help="OpenAI-compatible base URL for --director llm (e.g. http://127.0.0.1:8000/v1); the API "
                        "key, if any, comes from $AVATARCAST_LLM_API_KEY")
    p.add_argument("--llm-model", default=None, metavar="NAME", help="model name for --director llm")
    p.add_argument("--llm-send-portrait", action="store_true",
                   help="also show the model each session's portrait (an image part, for endpoints that accept "
                        "images; a text-only endpoint is asked again without it)")
    p.add_argument("--generator", choices=["parametric", "neural"], default="parametric",
                   help="what renders the sessions' sub-clips: parametric (CPU, real time; a video avatar's own "
                        "footage) or neural (needs --model-dir and a machine where it renders faster than real "
                        "time, a GPU: a session checks at its start and refuses otherwise)")
    p.add_argument("--model-dir", default=None, metavar="DIR",
                   help="local diffusers folder of a first-last-frame video model, for --generator neural")
    p.add_argument("--neural-steps", type=int, default=None, metavar="N",
                   help="diffusion steps per sub-clip for --generator neural (default 30; fewer is faster)")
    p.add_argument("--render-processes", action=argparse.BooleanOptionalAction, default=True,
                   help="render each session in a child process of its own, so sessions use several cores "
                        "(--no-render-processes: in a thread of the server process)")
    p.add_argument("--idle-hold-at", type=float, default=85.0, metavar="PCT",
                   help="from this machine CPU use (%%), idle frames are rendered every other frame (each shown "
                        "twice) so speech frames keep their deadlines; 0 = always render every frame")
    p.add_argument("--start-cushion-ms", default="auto", metavar="auto|MS",
                   help="speech audio an utterance waits for beyond its first frame before it starts: 'auto' "
                        "(default) starts at 20 ms and adds up to 80 ms while a session's speech frames are rendered "
                        "close to their deadlines (a busy machine), trading first-frame latency for no underruns; "
                        "a number fixes it")
    p.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                   help="run the sessions' render threads and render processes under the real-time policy "
                        "SCHED_RR at priority N (1-99), as audio servers do, so a busy machine cannot make a speech "
                        "frame late; needs root, CAP_SYS_NICE or ulimit -r N (0 = the normal policy; "
                        "docs/scaling.md)")
    p.add_argument("--worker-nice", type=int, default=0, metavar="N",
                   help="run the sessions' render processes, render threads and encoders N nice levels below the "
                        "server's event loop (0-19), which then keeps the playout clock, the ingest and the RTP "
                        "sending on time on a machine packed with sessions; they also yield to other jobs at the "
                        "server's level (0 = the same level; docs/scaling.md)")
    p.add_argument("--whip", default=None, metavar="URL",
                   help="also publish the default session to this WHIP endpoint (RFC 9725: an SFU or media server "
                        "such as LiveKit, MediaMTX, Janus, Cloudflare Stream), reconnecting with backoff; sessions "
                        "created over the API take a 'whip' object instead (docs/scaling.md)")
    p.add_argument("--whip-token", default=None, metavar="TOKEN",
                   help="bearer token for --whip (if not given: $AVATARCAST_WHIP_TOKEN, which keeps it out of the "
                        "process list)")
    p.add_argument("--rtmp", default=None, metavar="URL",
                   help="also push the default session to this RTMP URL (FLV, H.264 + AAC)")
    sec = p.add_argument_group("security (docs/security.md)")
    sec.add_argument("--public-url", default=None, metavar="URL",
                     help="the server's URL as clients reach it (e.g. https://avatar.example.com behind a reverse "
                          "proxy): the URLs the API returns are built from it, never from the request's Host header "
                          "(default: the bound address)")
    sec.add_argument("--tls-cert", default=None, metavar="PEM", help="TLS certificate chain: serve HTTPS and WSS")
    sec.add_argument("--tls-key", default=None, metavar="PEM", help="the TLS certificate's private key")
    sec.add_argument("--allow-plain-http", action="store_true",
                     help="serve plain HTTP on a non-loopback --host (only behind a TLS-terminating reverse proxy "
                          "on a trusted network); without it such a bind is refused")
    sec.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="a browser origin (scheme://host[:port]) allowed to open the ingest WebSocket besides the "
                          "server's own; repeatable; '*' allows any. Clients that send no Origin (not browsers) are "
                          "always allowed")
    sec.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                     help="a browser origin (scheme://host[:port]) allowed to call the API from its pages (CORS); "
                          "repeatable; '*' allows any. Default: any origin for WHEP and the viewing endpoints, none "
                          "for the admin API; once given, the origins listed for both")
    sec.add_argument("--max-connections", type=int, default=512,
                     help="open connections in total (lowered to fit the process's file-descriptor limit)")
    sec.add_argument("--max-connections-per-ip", type=int, default=64,
                     help="open connections per client address; 0 = no cap (behind a reverse proxy all clients "
                          "share its address)")
    sec.add_argument("--viewer-connect-timeout", type=float, default=5.0, metavar="S",
                     help="a WebRTC viewer not connected this long after its answer is removed, freeing its slot")


def run(args: argparse.Namespace) -> int:
    width, height = parse_size(args.size)
    if args.max_sessions < 1:
        raise InputError("--max-sessions must be at least 1")
    if not 1 <= args.max_viewers <= MAX_VIEWERS_LIMIT:
        raise InputError(f"--max-viewers must be from 1 to {MAX_VIEWERS_LIMIT} (viewers per session), "
                         f"got {args.max_viewers}")
    if not (0 <= args.port <= 65535):
        raise InputError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.max_connections < 16 or args.max_connections_per_ip < 0:
        raise InputError("--max-connections must be at least 16 and --max-connections-per-ip at least 0")
    if not (0.5 <= args.viewer_connect_timeout <= 120):
        raise InputError("--viewer-connect-timeout must be between 0.5 and 120 seconds")

    public_url = check_public_url(args.public_url) if args.public_url else None
    OriginPolicy(public_url, tuple(args.allow_origin))  # says which origin is malformed

    CorsPolicy(tuple(args.cors_origin))
    whip_url = check_whip_url(args.whip) if args.whip else None
    whip_token = check_whip_token(args.whip_token or os.environ.get("AVATARCAST_WHIP_TOKEN"))
    if whip_token and not whip_url:
        raise InputError("--whip-token needs --whip URL")
    check_bind(args.host, tls_context(args.tls_cert, args.tls_key) is not None, args.allow_plain_http)
    llm = live_llm(args.director, args.llm_url, args.llm_model, args.llm_send_portrait)
    realtime = check_priority(args.realtime_priority)
    worker_nice = check_worker_nice(args.worker_nice)
    generator = live_generator(args.generator, args.model_dir, args.neural_steps)
    if args.avatar is not None:
        from pathlib import Path

        if not Path(args.avatar).exists():
            raise InputError(f"--avatar {args.avatar}: no such file or folder")
    config = ServerConfig(host=args.host, port=args.port, avatar=args.avatar, width=width, height=height,
                          fps=check_fps(args.fps), token=args.token, public=args.public,
                          max_sessions=args.max_sessions, max_viewers=args.max_viewers,
                          max_buffer_ms=args.max_buffer_ms, max_message_bytes=args.max_message_kb * 1024,
                          instruction=args.instruction, rtmp_url=args.rtmp, demo=args.demo,
                          render_processes=args.render_processes, idle_hold_at=check_idle_hold_at(args.idle_hold_at),
                          start_cushion_ms=parse_start_cushion(args.start_cushion_ms),
                          whip_url=whip_url, whip_token=whip_token, cors_origins=tuple(args.cors_origin),
                          public_url=public_url, allowed_origins=tuple(args.allow_origin), tls_cert=args.tls_cert,
                          tls_key=args.tls_key, allow_plain_http=args.allow_plain_http,
                          max_connections=args.max_connections, max_connections_per_ip=args.max_connections_per_ip,
                          viewer_connect_timeout_s=args.viewer_connect_timeout, llm=llm,
                          realtime_priority=realtime, generator=generator, worker_nice=worker_nice)
    return asyncio.run(_serve(config, print_tokens=args.print_tokens, token_file=args.token_file))


def live_generator(name: str, model_dir: str | None, steps: int | None) -> LiveGenerator:
    """The sessions' generator for ``--generator`` (the folder and the extra checked at start-up)."""
    if name != "neural":
        if model_dir or steps is not None:
            raise InputError("--model-dir and --neural-steps need --generator neural")
        return LiveGenerator()
    if model_dir is None:
        raise InputError("--generator neural needs --model-dir: a local diffusers folder of a first-last-frame video "
                         "model")
    if steps is not None and not 1 <= steps <= 200:
        raise InputError(f"--neural-steps must be from 1 to 200, got {steps}")
    return LiveGenerator(name, model_dir, {"num_inference_steps": steps} if steps is not None else None)


def live_llm(director: str, url: str | None, model: str | None, send_portrait: bool) -> Any:
    """The ``LLMConfig`` for ``--director llm`` (None for the rules), checked at start-up."""
    if director != "llm":
        if url or model or send_portrait:
            raise InputError("--llm-url, --llm-model and --llm-send-portrait need --director llm")
        return None
    if not url or not model:
        raise InputError("--director llm needs --llm-url (an OpenAI-compatible base URL, e.g. "
                         "http://127.0.0.1:8000/v1) and --llm-model")
    return LLMConfig(base_url=url, model=model, send_portrait=send_portrait)


def default_token_file(port: int) -> Path:
    """``$XDG_RUNTIME_DIR/avatarcast-PORT.json`` (a per-user tmpfs), else ``~/.local/state/avatarcast-PORT.json``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    folder = Path(runtime) if runtime and Path(runtime).is_dir() else Path.home() / ".local" / "state"
    return folder / f"avatarcast-{port}.json"


def write_token_file(path: Path, tokens: dict[str, str]) -> None:
    """Write ``tokens`` as JSON readable by this user only (created 0600, never world-readable in between)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        json.dump(tokens, f, indent=2)
        f.write("\n")


def announce(handle, config, print_tokens: bool | None = None, token_file: str | None = None,
             out=None) -> Path | None:
    """The start-up lines: where to view, where to push speech, the admin token.

    Standard output of a service usually ends up in a log (journald, a container's log), and no secret belongs in a
    log: unless standard output is a terminal (or ``print_tokens``), the tokens are written to a 0600 file instead and
    the lines show ``token=<in FILE>``. Returns the file written, if any."""
    out = out or sys.stdout
    session = handle.session()
    base = handle.server.base_url
    ws = f"{base.replace('http', 'ws', 1)}/v1/sessions/{session.id}/ingest"
    show = out.isatty() if print_tokens is None else print_tokens
    path: Path | None = None
    if show:
        viewer_token, ingest_token, admin_token = session.viewer_token, session.ingest_token, handle.admin_token
    else:
        path = Path(token_file).expanduser() if token_file else default_token_file(handle.port)
        write_token_file(path, {"admin_token": handle.admin_token, "viewer_token": session.viewer_token,
                                "ingest_token": session.ingest_token, "session": session.id,
                                "viewer_url": f"{base}/?token={session.viewer_token}", "ingest_url": ws})
        viewer_token = ingest_token = admin_token = f"<in {path}>"
    view = f"{base}/" + ("" if config.public else f"?token={viewer_token}")

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    say(f"avatarcast is live at {view}")
    say(f"  viewer (OBS Browser Source): {view}")
    say(f"  ingest WebSocket: {ws} (token {ingest_token})")
    say(f"  admin token (REST API /v1/sessions): {admin_token}")
    say(f"  studio (control page): {base}/studio?token={admin_token}")
    if path is not None:
        say(f"  the tokens are in {path} (readable by this user only; --print-tokens shows them here)")
    return path


async def _serve(config, print_tokens: bool | None = None, token_file: str | None = None) -> int:
    # the command's own log handlers get the repeat limiter; a program that embeds the server keeps its own logging
    limit_repeated_log_lines()
    handle = await run_server(config)
    announce(handle, config, print_tokens=print_tokens, token_file=token_file)
    if config.demo:
        print("  demo: looping the bundled speech clip", flush=True)
    if config.host not in ("127.0.0.1", "::1", "localhost"):
        print(f"  warning: bound to {config.host}: reachable from the network; keep the tokens secret", flush=True)
        if not config.public_url:
            print("  warning: no --public-url: the URLs the API returns name 127.0.0.1; give the address clients "
                  "use", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        await stop.wait()
    finally:
        print("shutting down", flush=True)
        await handle.close()
    return 0
