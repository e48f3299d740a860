"""Run the live server: TTS speech pushed over a WebSocket becomes a lip-synced avatar streamed over WebRTC.

One process serves the REST API (sessions), the WebSocket ingest, WHEP-style WebRTC negotiation and the viewer
page (which doubles as an OBS Browser Source). With no arguments it streams the bundled default avatar; --demo
loops a bundled speech clip into it so the avatar talks at once.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from avatarcast.errors import InputError


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
    p.add_argument("--public", action="store_true", help="the default session can be viewed without a token")
    p.add_argument("--max-sessions", type=int, default=4, help="most sessions at once (the default one included)")
    p.add_argument("--max-viewers", type=int, default=8, help="most WebRTC viewers per session")
    p.add_argument("--max-buffer-ms", type=float, default=60000.0,
                   help="speech audio a session buffers ahead of playback (a TTS answer pushed faster than real "
                        "time waits here, and an interrupt drops it at once); beyond it the ingest stops reading "
                        "(TCP backpressure)")
    p.add_argument("--max-message-kb", type=int, default=256, help="largest WebSocket message accepted, in KiB")
    p.add_argument("--instruction", default=None, help="standing instruction for the default session's director")
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
    sec.add_argument("--max-connections", type=int, default=512,
                     help="open connections in total (lowered to fit the process's file-descriptor limit)")
    sec.add_argument("--max-connections-per-ip", type=int, default=64,
                     help="open connections per client address; 0 = no cap (behind a reverse proxy all clients "
                          "share its address)")
    sec.add_argument("--viewer-connect-timeout", type=float, default=5.0, metavar="S",
                     help="a WebRTC viewer not connected this long after its answer is removed, freeing its slot")


def run(args: argparse.Namespace) -> int:
    from avatarcast.livestream.load import check_idle_hold_at
    from avatarcast.livestream.scheduler import parse_start_cushion
    from avatarcast.livestream.server import ServerConfig
    from avatarcast.livestream.session import check_fps, parse_size

    width, height = parse_size(args.size)
    if args.max_sessions < 1:
        raise InputError("--max-sessions must be at least 1")
    if not (0 <= args.port <= 65535):
        raise InputError(f"--port {args.port} is not a TCP port (0-65535)")
    if args.max_connections < 16 or args.max_connections_per_ip < 0:
        raise InputError("--max-connections must be at least 16 and --max-connections-per-ip at least 0")
    if not (0.5 <= args.viewer_connect_timeout <= 120):
        raise InputError("--viewer-connect-timeout must be between 0.5 and 120 seconds")
    from avatarcast.livestream.security import OriginPolicy, check_bind, check_public_url, tls_context

    public_url = check_public_url(args.public_url) if args.public_url else None
    OriginPolicy(public_url, tuple(args.allow_origin))  # says which origin is malformed
    check_bind(args.host, tls_context(args.tls_cert, args.tls_key) is not None, args.allow_plain_http)
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
                          public_url=public_url, allowed_origins=tuple(args.allow_origin), tls_cert=args.tls_cert,
                          tls_key=args.tls_key, allow_plain_http=args.allow_plain_http,
                          max_connections=args.max_connections, max_connections_per_ip=args.max_connections_per_ip,
                          viewer_connect_timeout_s=args.viewer_connect_timeout)
    return asyncio.run(_serve(config))


async def _serve(config) -> int:
    from avatarcast.livestream.logs import limit_repeated_log_lines
    from avatarcast.livestream.server import run_server

    # the command's own log handlers get the repeat limiter; a program that embeds the server keeps its own logging
    limit_repeated_log_lines()
    handle = await run_server(config)
    session = handle.session()
    base = handle.server.base_url
    view = f"{base}/" + ("" if config.public else f"?token={session.viewer_token}")
    print(f"avatarcast is live at {view}", flush=True)
    print(f"  viewer (OBS Browser Source): {view}", flush=True)
    print(f"  ingest WebSocket: {base.replace('http', 'ws', 1)}/v1/sessions/default/ingest "
          f"(token {session.ingest_token})", flush=True)
    print(f"  admin token (REST API /v1/sessions): {handle.admin_token}", flush=True)
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
