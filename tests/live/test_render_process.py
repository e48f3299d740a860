"""Sessions rendering in child processes: the same frames as the in-thread renderer, the processes end with their
session, with the server and with a dead server, and a render process that dies is a session error, not a server
one."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time

import aiohttp
import numpy as np
import pytest

from avatarcast.core.errors import InputError
from avatarcast.core.types import NEUTRAL_STATE, ClipSpec, Keyframe
from avatarcast.face.loading import load_avatar
from avatarcast.live.client import IngestClient
from avatarcast.live.protocol import ErrorCode
from avatarcast.live.renderer import GeneratorFactory, ProcessRenderer, RendererDied, ThreadRenderer
from avatarcast.live.server import ServerConfig, run_server

SIZE = (128, 128)
FPS = 25.0


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once ``pid`` no longer runs (or is a zombie: it has exited and waits to be reaped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _clips() -> list[ClipSpec]:
    talk = NEUTRAL_STATE.with_(jaw_open=0.7, mouth_wide=0.3, head_yaw_deg=8.0, smile=0.4, gaze_x=0.3)
    rows = np.array([[0.1, 0.2, 0.0], [0.6, 0.1, 0.2], [0.9, 0.0, 0.5], [0.3, 0.5, 0.0], [0.0, 0.0, 0.0]],
                    np.float32)
    return [
        ClipSpec(index=0, first=Keyframe(0.0, NEUTRAL_STATE), last=Keyframe(0.04, NEUTRAL_STATE), fps=FPS,
                 start_frame=0, n_frames=1, seed=3),
        ClipSpec(index=1, first=Keyframe(0.04, NEUTRAL_STATE), last=Keyframe(0.24, talk), fps=FPS, start_frame=1,
                 n_frames=5, mouth=rows, blink_times_s=(0.1,), seed=3),
        ClipSpec(index=6, first=Keyframe(0.24, talk), last=Keyframe(0.28, NEUTRAL_STATE), fps=FPS, start_frame=6,
                 n_frames=1, mouth=rows[2:3], seed=3),
    ]


def _frames(renderer, clip: ClipSpec, start: int = 0) -> list[np.ndarray]:
    """The clip's frames from ``start`` on, asked for one by one with its mouth rows (a closed mouth without)."""
    rows = clip.mouth if clip.mouth is not None else np.zeros((clip.n_frames, 3), np.float32)
    return [renderer.frame(clip, i, row=rows[i])[0] for i in range(start, clip.n_frames)]


@pytest.fixture(scope="module")
def factory() -> GeneratorFactory:
    return GeneratorFactory(load_avatar(None), SIZE, seed=3, fps=FPS)


def test_both_renderers_analyse_the_mouth_like_the_analyzer(factory, speech) -> None:
    """The mouth rows a renderer puts into speech frames are the streaming analyzer's for the same audio, in a
    child process as in the thread; the frame is the one rendered with that row as the clip's mouth."""
    from dataclasses import replace

    from avatarcast.live.scheduler import MOUTH_LOOKAHEAD_S
    from avatarcast.audio.io import load_audio, resample
    from avatarcast.audio.visemes import StreamingMouthAnalyzer

    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    x = resample(audio.samples, audio.rate_hz, 16000)
    chunks = [x[i:i + 320] for i in range(0, len(x), 320)]
    ref = StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S)
    want = np.clip(np.concatenate([ref.push(c) for c in chunks] + [ref.flush()]), 0.0, 1.0)
    assert want[:, 0].max() > 0.3  # the speech opens the mouth
    plain = ThreadRenderer(factory())
    clip = _clips()[0]
    for renderer in (ThreadRenderer(factory()), ProcessRenderer(factory, name="mouth")):
        renderer.use_mouth_analyzer(StreamingMouthAnalyzer(FPS, lookahead_s=MOUTH_LOOKAHEAD_S))
        renderer.start()
        try:
            for c in chunks[:40]:
                renderer.mouth_push(7, c)
            frame, row = renderer.frame(clip, 0, (7, 5))  # asked for before the rest has arrived
            np.testing.assert_array_equal(row, want[5])
            for c in chunks[40:]:
                renderer.mouth_push(7, c)
            renderer.mouth_end(7)
            for j in (12, 30, len(want) - 1):
                frame, row = renderer.frame(clip, 0, (7, j))
                np.testing.assert_array_equal(row, want[j])
                expected = _frames(plain, replace(clip, index=100 + j, mouth=want[j].reshape(1, 3)))[0]
                assert np.array_equal(frame, expected)
            _, row = renderer.frame(clip, 0)  # no speech frame: no row
            assert row is None
        finally:
            renderer.close()


def test_process_frames_match_the_thread_renderer(factory) -> None:
    thread = ThreadRenderer(factory())
    proc = ProcessRenderer(factory, name="match")
    proc.start()
    try:
        assert proc.alive and proc.pid != os.getpid()
        for clip in _clips():
            a = _frames(proc, clip)
            b = _frames(thread, clip)
            assert len(a) == len(b) == clip.n_frames
            for x, y in zip(a, b):
                assert x.shape == (SIZE[1] * 3 // 2, SIZE[0]) and x.dtype == np.uint8
                assert np.array_equal(x, y)
        # a clip abandoned part-way (an interrupt) leaves nothing behind: the next clip is exact
        proc.frame(_clips()[1], 0)
        clip = _clips()[2]
        assert np.array_equal(_frames(proc, clip)[0], _frames(thread, clip)[0])
    finally:
        proc.close()
    assert not proc.alive and _gone(proc.pid)


def test_a_sub_clip_advanced_frame_by_frame_is_the_clip_rendered_whole(factory) -> None:
    """Live mode renders a sub-clip a frame at a time, its mouth rows written as the speech arrives, and reopens it
    part-way after held or replaced frames: every frame equals the same frame of the clip rendered whole (offline),
    in the thread and in a child process."""
    from avatarcast.live.renderer import to_yuv420p

    generator = factory()
    clip = _clips()[1]
    whole = [to_yuv420p(f) for f in generator.render(clip)]
    thread = ThreadRenderer(factory())
    proc = ProcessRenderer(factory, name="stream")
    proc.start()
    try:
        for renderer in (thread, proc):
            assert all(np.array_equal(a, b) for a, b in zip(_frames(renderer, clip), whole, strict=True))
            # resumed at frame 3 (frames 1-2 held), then frame 1 again (replaced slots), then to the end
            for i in (3, 1, 2, 3, 4):
                assert np.array_equal(renderer.frame(clip, i, row=clip.mouth[i])[0], whole[i])
            with pytest.raises(Exception, match="outside"):
                renderer.frame(clip, clip.n_frames)
    finally:
        proc.close()


class _SizeUnknown:
    """A factory that does not say its frame size: the frames then travel over the pipe."""

    def __init__(self, inner: GeneratorFactory) -> None:
        self.inner = inner

    def __call__(self):
        return self.inner()


class _Undersized:
    """Declares a smaller frame size (the shared buffer is made for it) than its generator renders."""

    def __init__(self, inner: GeneratorFactory) -> None:
        self.size = (96, 96)
        self.inner = inner

    def __call__(self):
        return self.inner()


def test_frames_travel_over_the_pipe_when_the_shared_buffer_cannot_hold_them(factory) -> None:
    thread = ThreadRenderer(factory())
    for proc in (ProcessRenderer(_SizeUnknown(factory), name="pipe"),
                 ProcessRenderer(_Undersized(factory), name="small")):
        proc.start()
        try:
            assert (proc._buffer is None) == (proc.name == "pipe")
            for clip in _clips():
                for x, y in zip(_frames(proc, clip), _frames(thread, clip), strict=True):
                    assert np.array_equal(x, y)
        finally:
            proc.close()
        assert proc._buffer is None


def test_the_frame_buffer_is_removed_with_the_renderer(factory) -> None:
    proc = ProcessRenderer(factory, name="buffer")
    proc.start()
    name = proc._buffer.name
    assert os.path.exists(f"/dev/shm/{name}")
    _frames(proc, _clips()[0])
    proc.close()
    assert not os.path.exists(f"/dev/shm/{name}")


class _Broken:
    def __call__(self):
        raise InputError("this portrait cannot be used")


def test_a_render_process_that_cannot_start_says_why() -> None:
    proc = ProcessRenderer(_Broken(), name="broken")
    with pytest.raises(InputError, match="cannot be used"):
        proc.start()
    assert not proc.alive


def test_a_killed_render_process_raises_renderer_died(factory) -> None:
    proc = ProcessRenderer(factory, name="killed")
    proc.start()
    try:
        os.kill(proc.pid, signal.SIGKILL)  # our own child
        assert _gone(proc.pid)
        with pytest.raises(RendererDied, match="killed by signal 9"):
            proc.frame(_clips()[0], 0)
    finally:
        proc.close()


def test_render_process_ends_when_the_server_process_dies(tmp_path) -> None:
    """A server killed outright (no cleanup runs) leaves no render process behind."""
    script = textwrap.dedent("""
        import sys, time
        from avatarcast.live.renderer import GeneratorFactory, ProcessRenderer
        from avatarcast.face.loading import load_avatar

        if __name__ == "__main__":
            proc = ProcessRenderer(GeneratorFactory(load_avatar(None), (64, 64), 0, 25.0), name="orphan")
            proc.start()
            print(proc.pid, flush=True)
            time.sleep(120)
    """)
    path = tmp_path / "server.py"
    path.write_text(script)
    parent = subprocess.Popen([sys.executable, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        child = int(line)
        assert not _gone(child, 0.3)
        parent.kill()  # SIGKILL: the parent cannot clean up
        parent.wait(10)
        assert _gone(child, 10.0), "the render process outlived its server"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(10)


# ---------------------------------------------------------------------------------------------- through the server


def _config(**kw) -> ServerConfig:
    base = dict(port=0, width=SIZE[0], height=SIZE[1], token="admin", max_sessions=3)
    base.update(kw)
    return ServerConfig(**base)


def test_session_render_processes_end_on_delete_and_on_server_close() -> None:
    async def main():
        h = await run_server(_config())
        headers = {"Authorization": "Bearer admin"}
        try:
            default = h.session().scheduler.renderer
            assert default.mode == "process" and default.alive
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.post(f"{h.base_url}/v1/sessions", json={}) as r:
                    assert r.status == 201
                    info = await r.json()
                assert info["render"] == "process" and info["error"] is None
                renderer = h.session(info["id"]).scheduler.renderer
                pid = renderer.pid
                assert renderer.alive and pid not in (None, default.pid)
                async with http.delete(f"{h.base_url}/v1/sessions/{info['id']}") as r:
                    assert r.status == 200
                assert _gone(pid) and not renderer.alive
        finally:
            await h.close()
        assert _gone(default.pid) and not default.alive

    run(main())


def test_thread_mode_has_no_render_process() -> None:
    async def main():
        h = await run_server(_config(render_processes=False))
        try:
            s = h.session()
            assert s.scheduler.renderer.mode == "thread"
            await asyncio.sleep(0.3)
            assert s.stats()["frames_rendered"] > 0
        finally:
            await h.close()

    run(main())


def test_a_dead_render_process_is_a_session_error_and_the_server_carries_on() -> None:
    async def main():
        h = await run_server(_config())
        headers = {"Authorization": "Bearer admin"}
        try:
            s = h.session()
            client = IngestClient(f"ws://127.0.0.1:{h.port}/v1/sessions/default/ingest", s.ingest_token)
            await client.connect()
            pid = s.scheduler.renderer.pid
            os.kill(pid, signal.SIGKILL)  # our own server's render process
            event = await client.wait_for("error", timeout=10)
            assert event.code == ErrorCode.RENDER_FAILED
            assert "render process" in event.message and "killed by signal 9" in event.message
            stats = s.stats()
            assert stats["error"] and "killed" in stats["error"]
            # the session's clock keeps running (audio on time, the last frame held)
            out = stats["frames_out"]
            await asyncio.sleep(0.3)
            assert s.stats()["frames_out"] > out
            async with aiohttp.ClientSession(headers=headers) as http:
                async with http.get(f"{h.base_url}/healthz") as r:
                    assert r.status == 200
                async with http.get(f"{h.base_url}/v1/sessions/default") as r:
                    assert "killed" in (await r.json())["error"]
                async with http.post(f"{h.base_url}/v1/sessions", json={}) as r:  # others still render
                    assert r.status == 201
                    other = h.session((await r.json())["id"])
                rendered = other.stats()["frames_rendered"]
                await asyncio.sleep(0.3)
                assert other.stats()["frames_rendered"] > rendered and other.stats()["error"] is None
                async with http.delete(f"{h.base_url}/v1/sessions/default") as r:
                    assert r.status == 200
            await client.close()
        finally:
            await h.close()

    run(main())


def test_without_shared_memory_frames_travel_over_the_pipe(factory, monkeypatch) -> None:
    from avatarcast.live import renderer as renderer_module

    def refuse(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(renderer_module.shared_memory, "SharedMemory", refuse)
    thread = ThreadRenderer(factory())
    proc = ProcessRenderer(factory, name="noshm")
    proc.start()
    try:
        assert proc._buffer is None
        clip = _clips()[1]
        for x, y in zip(_frames(proc, clip), _frames(thread, clip), strict=True):
            assert np.array_equal(x, y)
    finally:
        proc.close()
