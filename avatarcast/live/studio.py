"""The Studio: a control page for streamers at ``/studio``, and the admin API behind it.

A streamer who writes no code makes an avatar from a portrait (or a short video), creates sessions and copies their
OBS Browser Source URL, makes the avatar speak by typing (a local TTS, with its word timings as alignment) or with
their own microphone (the page streams it as the session's ingest), directs it (instructions, interrupt) and watches
the session's live figures. The page is plain HTML and JavaScript served from ``static/studio/`` (no build step, no
third-party origin).

| method and path | what |
| --- | --- |
| ``GET /studio`` | the page |
| ``GET /studio/api/avatars`` | the bundled default and the uploaded avatars, with their preparation progress |
| ``POST /studio/api/avatars?kind=portrait|video&name=N[&face=I]`` | upload (raw file body): 202, prepared in the background |
| ``GET /studio/api/avatars/{id}/preview`` | PNG: the detected face drawn on the portrait (a video: its first frame) |
| ``GET /studio/api/avatars/{id}/frame`` | PNG: the prepared avatar's first frame as a session renders it (512x512) |
| ``DELETE /studio/api/avatars/{id}`` | forget an uploaded avatar |
| ``GET /studio/api/voices`` | the local TTS voices installed |
| ``POST /studio/api/sessions`` | ``{avatar?, size?, fps?}`` -> 201, the session with its tokens and URLs |
| ``POST /studio/api/sessions/{id}/say`` | ``{text, voice?}``: synthesize with word timings (``tts.py``), play |
| ``POST /studio/api/sessions/{id}/instruction`` | ``{text}``: free-text direction, from the next plan on |

Everything needs the admin token (the page itself too: ``/studio?token=ADMIN_TOKEN``). Listing, ending, interrupting
and the stats use the REST API (``/v1/sessions...``); the microphone goes over the session's ingest WebSocket like any
TTS client's audio.

Uploads are bounded before anything is decoded: bytes (``MAX_PORTRAIT_BYTES``, ``MAX_VIDEO_BYTES``, read with a
time limit), pixels (from the image header, ``avatar.MAX_IMAGE_PIXELS``), how many avatars are kept
(``MAX_AVATARS``) and how many wait for preparation (``MAX_PENDING``). Preparation runs on a worker thread of its
own, one at a time, never on the event loop; its stage and progress are polled by the page.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from avatarcast.core.errors import AvatarcastError, FaceError, InputError
from avatarcast.core.types import AvatarState
from avatarcast.direction.instructions import parse_instruction
from avatarcast.face import mesh as face_mesh
from avatarcast.face.avatar import _decode_image, _face_cut, _limit_size, prepare_avatar
from avatarcast.face.loading import load_avatar
from avatarcast.face.video_avatar import prepare_video_avatar
from avatarcast.generators.factory import make_generator
from avatarcast.live.protocol import ErrorCode
from avatarcast.live.renderer import RenderError
from avatarcast.live.rest import RequestError, parse_model, read_json_body
from avatarcast.live.security import COMMON_HEADERS
from avatarcast.live.session import MAX_FPS, MIN_FPS, Session, SessionLimitError, SessionSettings, parse_size
from avatarcast.live.tts import TtsError, available_voices, synthesize_with_timings

if TYPE_CHECKING:
    from avatarcast.live.server import LiveServer

log = logging.getLogger(__name__)

STUDIO_DIR = Path(__file__).parent / "static" / "studio"
MAX_AVATARS = 12
"""Uploaded avatars kept (ready or being prepared); failed ones make room for new uploads."""
MAX_PENDING = 2
"""Uploads being received, waiting for preparation or in it."""
MAX_PORTRAIT_BYTES = 20 * 1024 * 1024
MAX_VIDEO_BYTES = 200 * 1024 * 1024
UPLOAD_TIMEOUT_S = 120.0
"""An upload must arrive within this time."""
UPLOAD_CHUNK_BYTES = 256 * 1024
MAX_SAY_CHARS = 1000
MAX_STUDIO_INSTRUCTION_CHARS = 2000
PREVIEW_MAX_SIDE_PX = 512
SAY_CHUNK_MS = 100
"""The synthesized speech is handed to the session in pieces of this length (the backlog paces them)."""

PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' blob: data:; media-src 'self' blob: mediastream:; base-uri 'none'; "
            "form-action 'none'; frame-ancestors 'none'")
"""The page loads its script, worklet and style from the server only; nothing inline runs."""


class CreateStudioSessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, frozen=True)

    avatar: Annotated[str, Field(min_length=1, max_length=64)] = "default"
    size: Annotated[str, Field(max_length=16)] | None = None
    fps: Annotated[float, Field(ge=MIN_FPS, le=MAX_FPS)] | None = None


class SayRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: Annotated[str, Field(min_length=1, max_length=MAX_SAY_CHARS)]
    voice: Annotated[str, Field(max_length=64)] | None = None


class InstructionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: Annotated[str, Field(max_length=MAX_STUDIO_INSTRUCTION_CHARS)]


@dataclass
class StudioAvatar:
    """One uploaded avatar and where its preparation stands."""

    id: str
    name: str
    kind: Literal["portrait", "video"]
    status: Literal["queued", "preparing", "ready", "failed"] = "queued"
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    folder: Path | None = None
    preview_png: bytes | None = None
    frame_png: bytes | None = None  # the avatar's first frame as a session renders it
    details: dict[str, Any] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "kind": self.kind, "status": self.status, "stage": self.stage,
                "progress": round(self.progress, 3), "error": self.error, "details": self.details,
                "preview": f"/studio/api/avatars/{self.id}/preview" if self.preview_png else None,
                "frame": f"/studio/api/avatars/{self.id}/frame" if self.frame_png else None}


def _safe_name(name: str) -> str:
    keep = "".join(c for c in name if c.isalnum() or c in " ._-()")[:80].strip().lstrip(".")
    return keep or "upload"  # never "", "." or "..": a video is written under this name


# ---------------------------------------------------------------------------------------------- preparation


def _draw_face(image: np.ndarray, box: tuple[float, float, float, float], landmarks: np.ndarray | None) -> bytes:
    """PNG of ``image`` (RGB) scaled to at most ``PREVIEW_MAX_SIDE_PX`` with the face box and mesh points drawn."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, PREVIEW_MAX_SIDE_PX / max(h, w))
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
    x0, y0, x1, y1 = (round(v * scale) for v in box)
    cv2.rectangle(bgr, (x0, y0), (x1, y1), (80, 220, 80), 2)
    if landmarks is not None:
        for x, y in (landmarks[:, :2] * scale).astype(int)[::3]:
            cv2.circle(bgr, (int(x), int(y)), 1, (60, 200, 255), -1)
    ok, png = cv2.imencode(".png", bgr)
    if not ok:
        raise AvatarcastError("could not encode the preview image")
    return png.tobytes()


def _draw_faces(image: np.ndarray, faces: list) -> bytes:
    """PNG of ``image`` with every detected face boxed and numbered as ``face`` counts them (0 = leftmost)."""
    import cv2

    h, w = image.shape[:2]
    scale = min(1.0, PREVIEW_MAX_SIDE_PX / max(h, w))
    png = _draw_face(image, faces[0].box, None)
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = (round(v * scale) for v in face.box)
        cv2.rectangle(bgr, (x0, y0), (x1, y1), (80, 220, 80), 2)
        cv2.putText(bgr, str(i), (x0 + 3, max(14, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (80, 220, 80), 2)
    ok, out = cv2.imencode(".png", bgr)
    return out.tobytes() if ok else png


def first_frame_png(folder: Path, size: tuple[int, int] = (512, 512)) -> bytes:
    """The prepared avatar's first frame at ``size``, neutral, as a session's generator renders it."""
    import cv2

    generator = make_generator("parametric", load_avatar(folder), size, 0, fps=25.0)
    frame = generator.render_state(AvatarState(), 0)
    ok, png = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2BGR))
    if not ok:
        raise AvatarcastError("could not encode the first frame")
    return png.tobytes()


def prepare_portrait(entry: StudioAvatar, data: bytes, face_index: int | None, folder: Path) -> None:
    """Decode (after the header's pixel check), detect, mesh and save; updates ``entry``'s stage as it goes.
    Raises ``InputError``/``FaceError`` with a message for the streamer."""

    shown = Path(entry.name)
    entry.stage, entry.progress = "reading the image", 0.05
    image = _limit_size(_decode_image(data, shown))
    entry.stage, entry.progress = "finding faces", 0.25
    faces = face_mesh.detect_faces(image)
    entry.details["faces"] = len(faces)
    if len(faces) > 1 and face_index is None:
        entry.preview_png = _draw_faces(image, faces)  # numbered, so the streamer can pick one
        raise FaceError(f"{len(faces)} faces found in {entry.name}: choose one with 'Face' (0 = leftmost, up to "
                        f"{len(faces) - 1}) and upload again, or use a portrait with one person")
    entry.stage, entry.progress = "fitting the face mesh", 0.5
    try:
        avatar = prepare_avatar(image, face_index)
    except AvatarcastError as exc:  # its messages name the array it was given: name the streamer's file instead
        raise type(exc)(str(exc).replace("<array>", entry.name)) from None
    avatar.source = entry.name
    outside, _ = _face_cut(avatar.landmarks, avatar.image.shape[1], avatar.image.shape[0])
    if outside > 0.01:
        entry.details["warning"] = (f"the face is cut by the image edge ({outside:.0%} of it is outside): usable, "
                                    "but the cut side cannot move")
    entry.stage, entry.progress = "saving", 0.85
    avatar.save(folder)
    entry.details.update(width=int(avatar.image.shape[1]), height=int(avatar.image.shape[0]),
                         face_box=[int(v) for v in avatar.face_box],
                         head_pose_deg=[round(float(v), 1) for v in avatar.head_pose_deg])
    entry.preview_png = _draw_face(avatar.image, avatar.face_box, avatar.landmarks)


def prepare_video(entry: StudioAvatar, clip: Path, folder: Path) -> None:
    """A video avatar from one clip (``prepare --video``); the preview is the clip's first frame with its face."""
    import cv2

    entry.stage, entry.progress = "reading the first frame", 0.05
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    if not ok or frame is None:
        raise InputError(f"cannot read {entry.name} as a video (corrupt or not a video file); use an MP4, MOV, "
                         "MKV or WebM clip")
    rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    faces = face_mesh.detect_faces(rgb)
    if not faces:
        raise FaceError(f"no face found in the first frame of {entry.name}; film one person facing the camera")
    face = max(faces, key=lambda f: f.area)
    entry.preview_png = _draw_face(rgb, face.box, None)
    entry.details["faces"] = len(faces)
    entry.stage, entry.progress = "tracking the face and building the mouth bank (takes a while)", 0.2
    prepare_video_avatar([clip], folder, progress=False)
    entry.details.update(width=int(rgb.shape[1]), height=int(rgb.shape[0]))


# ---------------------------------------------------------------------------------------------- the studio


class Studio:
    """The studio's state (uploaded avatars, worker threads) and its request handlers."""

    def __init__(self, server: "LiveServer", folder: str | Path | None = None) -> None:
        self.server = server
        self._own_folder = folder is None
        self._folder = Path(folder) if folder is not None else None
        self.avatars: dict[str, StudioAvatar] = {}
        self._prepare = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-prepare")
        self._tts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="studio-tts")
        self._tasks: set[asyncio.Task] = set()
        self._receiving = 0  # uploads being read
        self._html = (STUDIO_DIR / "index.html").read_text(encoding="utf-8")
        self._headers = {**COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}

    @property
    def folder(self) -> Path:
        """Where uploads and prepared avatars live (made at the first upload)."""
        if self._folder is None:
            self._folder = Path(tempfile.mkdtemp(prefix="avatarcast-studio-"))
        self._folder.mkdir(parents=True, exist_ok=True)
        return self._folder

    def install(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/studio", self.page)
        r.add_get("/studio/api/avatars", self.list_avatars)
        r.add_post("/studio/api/avatars", self.upload_avatar)
        r.add_get("/studio/api/avatars/{id}/preview", self.avatar_preview)
        r.add_get("/studio/api/avatars/{id}/frame", self.avatar_frame)
        r.add_delete("/studio/api/avatars/{id}", self.delete_avatar)
        r.add_get("/studio/api/voices", self.voices)
        r.add_post("/studio/api/sessions", self.create_session)
        r.add_post("/studio/api/sessions/{id}/say", self.say)
        r.add_post("/studio/api/sessions/{id}/instruction", self.instruction)
        app.on_shutdown.append(self.on_shutdown)

    async def on_shutdown(self, app: web.Application) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._prepare.shutdown(wait=False, cancel_futures=True)
        self._tts.shutdown(wait=False, cancel_futures=True)
        if self._own_folder and self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _auth(self, request: web.Request) -> web.Response | None:
        return self.server._auth(request)

    def _session(self, request: web.Request) -> Session | web.Response:
        return self.server._session(request)

    # ------------------------------------------------------------------------------------------ page

    async def page(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return web.Response(text=self._html, content_type="text/html", headers=self._headers)

    # ------------------------------------------------------------------------------------------ avatars

    async def list_avatars(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        default = {"id": "default", "name": "bundled default portrait", "kind": "portrait", "status": "ready",
                   "stage": "ready", "progress": 1.0, "error": None, "details": {}, "preview": None, "frame": None}
        return web.json_response({"avatars": [default, *(a.info() for a in self.avatars.values())],
                                  "max_avatars": MAX_AVATARS, "max_portrait_bytes": MAX_PORTRAIT_BYTES,
                                  "max_video_bytes": MAX_VIDEO_BYTES})

    async def upload_avatar(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        kind = request.query.get("kind", "portrait")
        if kind not in ("portrait", "video"):
            return RequestError(400, ErrorCode.INVALID_FIELD, "kind must be 'portrait' or 'video'", "kind").response()
        face_index: int | None = None
        if request.query.get("face", "") != "":
            try:
                face_index = int(request.query["face"])
                if not 0 <= face_index < 32:
                    raise ValueError
            except ValueError:
                return RequestError(400, ErrorCode.INVALID_FIELD, "face must be a whole number from 0 (leftmost) to 31",
                                    "face").response()
        name = _safe_name(request.query.get("name", kind))
        limit = MAX_PORTRAIT_BYTES if kind == "portrait" else MAX_VIDEO_BYTES
        if request.content_length is not None and request.content_length > limit:
            return RequestError(413, ErrorCode.MESSAGE_TOO_LARGE,
                                f"{name} is {request.content_length / 1048576:.1f} MB; a {kind} upload is at most "
                                f"{limit // 1048576} MB").response()
        pending = self._receiving + sum(1 for a in self.avatars.values() if a.status in ("queued", "preparing"))
        if pending >= MAX_PENDING:
            return RequestError(429, "busy", f"{pending} uploads are still being received or prepared; wait for "
                                "them").response()
        if len(self.avatars) + self._receiving >= MAX_AVATARS:
            failed = [k for k, a in self.avatars.items() if a.status == "failed"]
            if not failed:
                return RequestError(409, "avatar_limit", f"the studio keeps at most {MAX_AVATARS} avatars; delete one "
                                    "first").response()
            self.avatars.pop(failed[0])
        entry = StudioAvatar(id=secrets.token_hex(5), name=name, kind=kind)  # type: ignore[arg-type]
        # a video goes to disk as it arrives (up to MAX_VIDEO_BYTES); a portrait is kept in memory
        clip = self.folder / f"{entry.id}.upload" / name if kind == "video" else None
        self._receiving += 1
        try:
            data = await asyncio.wait_for(self._read_body(request, limit, clip), UPLOAD_TIMEOUT_S)
        except (asyncio.TimeoutError, RequestError) as exc:
            if clip is not None:
                shutil.rmtree(clip.parent, ignore_errors=True)
            if isinstance(exc, RequestError):
                return exc.response()
            return RequestError(408, "body_timeout", f"the upload did not arrive within {UPLOAD_TIMEOUT_S:g} s").response()
        finally:
            self._receiving -= 1
        if not data:
            if clip is not None:
                shutil.rmtree(clip.parent, ignore_errors=True)
            return RequestError(400, ErrorCode.INVALID_FIELD, "the upload is empty: send the file as the request "
                                "body").response()
        self.avatars[entry.id] = entry
        task = asyncio.create_task(self._run_preparation(entry, data, face_index, clip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        log.info("studio: %s upload %s (%d bytes) queued for preparation", kind, entry.id,
                 data if isinstance(data, int) else len(data))
        return web.json_response(entry.info(), status=202)

    async def _read_body(self, request: web.Request, limit: int, path: Path | None) -> bytes | int:
        """The body (or, with ``path``, its size once written there), refused beyond ``limit`` bytes."""
        buf = bytearray()
        size = 0
        out = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            out = path.open("wb")
        try:
            while True:
                chunk = await request.content.read(UPLOAD_CHUNK_BYTES)
                if not chunk:
                    return size if out is not None else bytes(buf)
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, ErrorCode.MESSAGE_TOO_LARGE,
                                       f"the upload is larger than {limit // 1048576} MB")
                if out is not None:
                    out.write(chunk)
                else:
                    buf += chunk
        finally:
            if out is not None:
                out.close()

    async def _run_preparation(self, entry: StudioAvatar, data: bytes | int, face_index: int | None,
                               clip: Path | None) -> None:
        folder = self.folder / entry.id
        loop = asyncio.get_running_loop()

        def work() -> None:
            entry.status = "preparing"
            if clip is None:
                assert isinstance(data, bytes)
                prepare_portrait(entry, data, face_index, folder)
            else:
                try:
                    prepare_video(entry, clip, folder)  # the clip under the streamer's own file name
                finally:
                    shutil.rmtree(clip.parent, ignore_errors=True)
            entry.stage, entry.progress = "rendering a first frame", 0.95
            entry.frame_png = first_frame_png(folder)

        t0 = time.monotonic()
        try:
            await loop.run_in_executor(self._prepare, work)
        except AvatarcastError as exc:
            entry.status, entry.stage, entry.error = "failed", "failed", str(exc)
            shutil.rmtree(folder, ignore_errors=True)
            log.info("studio: avatar %s refused: %s", entry.id, exc)
            return
        except Exception as exc:  # a bug, not the streamer's file: say so without a traceback in the page
            entry.status, entry.stage = "failed", "failed"
            entry.error = f"preparation failed unexpectedly ({type(exc).__name__}); see the server log"
            shutil.rmtree(folder, ignore_errors=True)
            log.exception("studio: preparing avatar %s failed", entry.id)
            return
        if entry.id not in self.avatars:  # deleted meanwhile
            shutil.rmtree(folder, ignore_errors=True)
            return
        entry.folder = folder
        entry.details["prepare_s"] = round(time.monotonic() - t0, 2)
        entry.status, entry.stage, entry.progress = "ready", "ready", 1.0
        log.info("studio: avatar %s ready in %.1f s", entry.id, time.monotonic() - t0)

    async def avatar_preview(self, request: web.Request) -> web.Response:
        return self._avatar_png(request, "preview_png", "no preview for this avatar (yet)")

    async def avatar_frame(self, request: web.Request) -> web.Response:
        return self._avatar_png(request, "frame_png", "no first frame for this avatar (yet)")

    def _avatar_png(self, request: web.Request, attr: str, missing: str) -> web.Response:
        """One of an avatar's pictures (``attr``: ``preview_png`` or ``frame_png``), or 404 with ``missing``."""
        if (denied := self._auth(request)) is not None:
            return denied
        entry = self.avatars.get(request.match_info["id"])
        png = getattr(entry, attr) if entry is not None else None
        if png is None:
            return RequestError(404, ErrorCode.NOT_FOUND, missing).response()
        return web.Response(body=png, content_type="image/png", headers={"Cache-Control": "no-cache"})

    async def delete_avatar(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        entry = self.avatars.pop(request.match_info["id"], None)
        if entry is None:
            return RequestError(404, ErrorCode.NOT_FOUND, "no such avatar").response()
        if entry.folder is not None and not any(s.settings.avatar == str(entry.folder)
                                                for s in self.server.sessions.sessions.values()):
            shutil.rmtree(entry.folder, ignore_errors=True)
        return web.json_response({"deleted": entry.id})

    # ------------------------------------------------------------------------------------------ sessions

    async def create_session(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        try:
            body: CreateStudioSessionRequest = parse_model(CreateStudioSessionRequest, await read_json_body(request))
        except RequestError as exc:
            return exc.response()
        cfg = self.server.config
        if body.avatar == "default":
            avatar = cfg.avatar
        else:
            entry = self.avatars.get(body.avatar)
            if entry is None or entry.status != "ready" or entry.folder is None:
                return RequestError(400, ErrorCode.INVALID_FIELD, "that avatar is not ready (or does not exist)",
                                    "avatar").response()
            avatar = str(entry.folder)
        try:
            w, h = parse_size(body.size if body.size is not None else f"{cfg.width}x{cfg.height}")
        except AvatarcastError as exc:
            return RequestError(400, ErrorCode.INVALID_FIELD, str(exc), "size").response()
        settings = SessionSettings(avatar=avatar, width=w, height=h, fps=body.fps or cfg.fps)
        try:
            session = await self.server.sessions.create(settings)
        except SessionLimitError as exc:
            return RequestError(429, ErrorCode.SESSION_LIMIT, str(exc)).response()
        except RenderError as exc:  # the machine could not start the session's render process
            log.warning("studio: a session could not start: %s", exc)
            return RequestError(503, ErrorCode.RENDER_FAILED, str(exc)).response()
        except (AvatarcastError, ValueError) as exc:
            return RequestError(400, ErrorCode.INVALID_MESSAGE, str(exc)).response()
        return web.json_response(session.info(self.server._base(request), with_tokens=True), status=201)

    # ------------------------------------------------------------------------------------------ speech, direction

    async def voices(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        return web.json_response({"voices": [v.info() for v in available_voices()]})

    async def say(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        try:
            body: SayRequest = parse_model(SayRequest, await read_json_body(request))
        except RequestError as exc:
            return exc.response()
        if not body.text.strip():
            return RequestError(400, ErrorCode.INVALID_FIELD, "text: type something to say", "text").response()
        loop = asyncio.get_running_loop()
        try:
            speech = await loop.run_in_executor(self._tts, synthesize_with_timings, body.text, body.voice)
        except TtsError as exc:
            return RequestError(400, "tts_failed", str(exc), "voice" if exc.voice else None).response()
        if session.closed:
            return RequestError(404, ErrorCode.NOT_FOUND, "the session ended").response()
        scheduler = session.scheduler
        backlog = session.backlog
        backlog.control(scheduler.end_utterance)  # whatever was being said before ends here
        if speech.words:
            words, phones = speech.words, speech.phones
            backlog.control(lambda: scheduler.add_words(words, phones))
        step = speech.rate_hz * SAY_CHUNK_MS // 1000 * 2
        for pos in range(0, len(speech.pcm), step):
            backlog.push_audio(speech.pcm[pos:pos + step], speech.rate_hz)
            if pos and not (pos // step) % 10:
                await asyncio.sleep(0)  # a long text: let the playout clock run between pieces
        backlog.control(scheduler.end_utterance)
        return web.json_response({"session_id": session.id, "voice": speech.voice, "duration_ms": speech.duration_ms,
                                  "words": [{"word": w.text, "start_ms": round(w.start_s * 1000, 1),
                                             "end_ms": round(w.end_s * 1000, 1)} for w in speech.words],
                                  "alignment": bool(speech.words), "tts_ms": speech.tts_ms})

    async def instruction(self, request: web.Request) -> web.Response:
        if (denied := self._auth(request)) is not None:
            return denied
        session = self._session(request)
        if isinstance(session, web.Response):
            return session
        try:
            body: InstructionRequest = parse_model(InstructionRequest, await read_json_body(request))
        except RequestError as exc:
            return exc.response()

        parsed = parse_instruction(body.text)
        text = body.text
        session.backlog.control(lambda: session.scheduler.set_instruction(text), size=len(text.encode()),
                                keep_on_interrupt=True)
        cues = [f"{c.emotion.value} ({c.anchor.describe()})" for c in parsed.emotions] + \
            [f"{c.kind.value} ({c.anchor.describe()})" for c in parsed.actions]
        return web.json_response({"session_id": session.id, "instruction": text, "cues": cues,
                                  "warnings": list(parsed.warnings)})


def install(app: web.Application, server: "LiveServer") -> Studio:
    """Add the studio's routes to ``app``; uploaded avatars live in ``server.config.extra['studio_dir']`` (a
    temporary folder, removed at shutdown, when not given)."""
    studio = Studio(server, server.config.extra.get("studio_dir"))
    studio.install(app)
    return studio
