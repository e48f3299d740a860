"""The neural generator: first-last-frame video diffusion (Wan2.1 FLF2V through diffusers) between two keyframes.

``NeuralGenerator(model_dir, avatar, size, seed)`` loads a diffusers ``WanImageToVideoPipeline`` folder from local
disk (nothing is downloaded) and renders each ``ClipSpec`` by calling it with ``image=first, last_image=last``:
the model gives texture and motion realism between the two keyframes of the blueprint.

How a clip is made (and why):

1. **Keyframe images.** ``Keyframe.image`` when the cascade provides one, else the parametric renderer's image of
   the keyframe state (``ParametricGenerator.render_state``), so the neural clip starts from exactly the framing,
   identity and pose of the blueprint.
2. **Frame count.** Wan generates ``4k + 1`` frames (its VAE compresses time by 4). A clip needs frames
   ``0 .. n_frames`` inclusive (frame ``n_frames`` is the last keyframe = the next clip's frame 0), so we generate
   the smallest ``4k + 1 >= n_frames + 1`` (capped at ``max_frames``) spanning the same interval, and resample to
   the clip's frame times by linear blending of the two nearest generated frames (the step is within 4/n_frames of
   one frame, so blending is nearly always between a frame and itself or a close neighbour: no judder, no ghosts).
3. **Size.** Wan wants sides that are multiples of 16 (VAE x8, patches x2). We generate at the output size rounded
   up to multiples of 16 (or ``generation_size``), resizing the keyframes to it, and resize the frames back. The
   same resize both ways maps every point back to where it was, so the keyframe geometry is preserved.
4. **Endpoints.** Frame 0 is made *exactly* the first keyframe image: the difference between the keyframe and the
   generated frame 0 is added back with a weight that is 1 at frame 0 and falls smoothly to 0 over
   ``endpoint_blend_frames`` frames. The last keyframe is honoured the same way towards the end: its residual
   against the generated final frame (the frame at time ``n_frames``) is added with a weight that reaches 1 at
   ``n_frames``. That frame is not emitted by this clip; it is the next clip's frame 0, which that clip replaces by
   the same keyframe image exactly. Both sides of every join therefore converge to the same image: seamless.
5. **Lip sync.** diffusers has no audio-driven video pipeline, so the model cannot follow the speech. The mouth is
   driven by the audio through the parametric mouth: for every frame the parametric generator renders the clip's
   mouth rows (``clip.mouth``), and its mouth region (lips, with a margin for the moving skin and the chin) is
   composited onto the neural frame with a feathered mask. When the face mesh finds the face in the neural frame,
   the patch is first aligned (similarity transform on stable points: nose, cheeks, mouth corners) to the neural
   frame's geometry, and its colour is matched to the neural frame around the mask's edge. The neural model gives
   texture and motion; the parametric mouth guarantees sync.
6. **Live.** A live session renders each sub-clip a frame at a time while its speech arrives
   (``ClipSpec.mouth_streamed``) and tells the generator about the sub-clips ahead of playback (``prepare``): their
   videos are generated in the background, one at a time, and kept (``PREPARED_CLIPS``), so a sub-clip's first frame
   does not wait for its diffusion when it was prepared in time and a sub-clip reopened part-way is not generated
   twice.
7. **Attention.** Every attention of the transformer runs through ``avatarcast.kernels.attention`` (Triton on CUDA,
   SDPA on CPU) via ``KernelAttnProcessor``, set on each ``WanAttention`` module with ``set_attn_processor``. With
   ``attention_window=(before, after)`` the video self-attention becomes frame-block sparse: each latent frame
   sees that many latent frames around it plus the first latent frame (the first keyframe's tokens) as anchors.
   Dense (the default) is what Wan was trained with.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import cv2
import numpy as np

from avatarcast.core.errors import InputError, InvalidValueError, MissingDependencyError
from avatarcast.core.types import AvatarState, ClipSpec
from avatarcast.face.loading import load_avatar
from avatarcast.face.mesh import detect_faces, face_landmarks
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.generators.parametric.rig import LIPS_LOWER_OUTER, LIPS_UPPER_OUTER
from avatarcast.kernels.dispatch import attention as kernel_attention
from avatarcast.kernels.masks import FrameBlockSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from avatarcast.face.avatar import Avatar

log = logging.getLogger(__name__)

PIPELINE_CLASS = "WanImageToVideoPipeline"
REQUIRED_COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")
WAN_TEXT_TOKENS = 512  # Wan's attention processor splits image/text context assuming 512 text tokens
SIZE_MULTIPLE_PX = 16
DEFAULT_PROMPT = ("a person talking to the camera, natural subtle head motion, blinking, realistic skin and hair, "
                  "steady camera, studio lighting")
DEFAULT_NEGATIVE_PROMPT = ("blurry, distorted face, deformed mouth, extra teeth, flicker, text, watermark, "
                           "static image, low quality")
MOUTH_MARGIN = 0.35  # mouth-mask margin around the outer lips, in mouth widths (covers the skin the jaw moves)
MOUTH_CHIN_EXTENT = 0.55  # how far below the lips the mask reaches, in mouth widths (the chin follows the jaw)
MOUTH_FEATHER = 0.18  # Gaussian feather of the mask edge, in mouth widths
ALIGN_POINTS = np.array([1, 4, 195, 50, 280, 205, 425, 61, 291], np.int32)  # nose, cheeks, mouth corners


def _smooth_weight(x: np.ndarray) -> np.ndarray:
    """1 at x <= 0, 0 at x >= 1, cosine in between."""
    x = np.clip(x, 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * x))


def generation_frames(n_frames: int, temporal_factor: int = 4, max_frames: int = 81) -> int:
    """The Wan frame count ``k * temporal_factor + 1`` that covers clip frames ``0 .. n_frames`` inclusive."""
    k = max(1, math.ceil(n_frames / temporal_factor))
    count = k * temporal_factor + 1
    cap = (max(max_frames, temporal_factor + 1) - 1) // temporal_factor * temporal_factor + 1
    return min(count, cap)


def rounded_size(size: tuple[int, int], multiple: int = SIZE_MULTIPLE_PX) -> tuple[int, int]:
    """``(width, height)`` rounded up to multiples of ``multiple``."""
    return tuple(int(math.ceil(s / multiple) * multiple) for s in size)  # type: ignore[return-value]


def timeline_frame(video: np.ndarray, first: np.ndarray, last: np.ndarray, n_frames: int, i: int,
                   blend_frames: int = 4) -> np.ndarray:
    """Clip frame ``i`` (``0 <= i <= n_frames``) from a generated video spanning the clip's keyframe interval.

    The video (``(F, H, W, 3)`` float, F = 4k + 1) is resampled at the clip's frame times (linear blend of the two
    nearest generated frames). The endpoint residuals are added back with smooth weights, so frame 0 equals
    ``first`` and frame ``n_frames`` equals ``last`` exactly (up to uint8 rounding, which is exact for uint8 inputs).
    """
    n_gen = len(video)
    u = i * (n_gen - 1) / n_frames
    lo = min(int(math.floor(u)), n_gen - 1)
    hi = min(lo + 1, n_gen - 1)
    frac = np.float32(u - lo)
    frame = video[lo] * (1.0 - frac) + video[hi] * frac
    ramp = min(float(blend_frames), n_frames / 2.0)  # the two ramps never overlap an endpoint
    w_first = float(_smooth_weight(np.float64(i / ramp)))
    w_last = float(_smooth_weight(np.float64((n_frames - i) / ramp)))
    if w_first > 0.0:
        frame = frame + np.float32(w_first) * (first.astype(np.float32) - video[0])
    if w_last > 0.0:
        frame = frame + np.float32(w_last) * (last.astype(np.float32) - video[-1])
    return np.clip(np.rint(frame), 0, 255).astype(np.uint8)


class KernelAttnProcessor:
    """A ``WanAttention`` processor that computes every attention with ``avatarcast.kernels.attention``.

    It mirrors diffusers 0.42's ``WanAttnProcessor`` (projections, QK norms, rotary embeddings, the I2V image
    cross-attention branch) and replaces its ``dispatch_attention_fn`` calls, which take ``(B, L, H, D)``, by our
    dispatch, which takes ``(B, H, L, D)``; the transposes are views (the kernel takes strides). Self-attention gets
    the frame-block ``spec`` when one is set (``tokens_per_frame`` is filled in per call by a forward pre-hook on
    the transformer, from the latent's shape); cross-attention to text and image tokens stays dense.
    """

    def __init__(self, window: tuple[int, int] | None = None, anchor_frames: int = 1, backend: str = "auto"):
        self.window = window
        self.anchor_frames = anchor_frames
        self.backend = backend
        self.tokens_per_frame: int | None = None

    def spec(self) -> FrameBlockSpec | None:
        if self.window is None or self.tokens_per_frame is None:
            return None
        t = self.tokens_per_frame
        return FrameBlockSpec(tokens_per_frame=t, window_before=self.window[0], window_after=self.window[1],
                              n_anchor=self.anchor_frames * t)

    def _attend(self, q, k, v, spec=None, mask=None):
        padding = None
        if mask is not None:
            # diffusers passes masks broadcastable to (B, H, Lq, Lk); a key mask is all we can honour exactly
            m = mask
            while m.ndim > 2 and m.shape[-2] == 1:
                m = m.squeeze(-2)
            if m.ndim == 3 and m.shape[1] == 1:
                m = m[:, 0]
            if m.ndim != 2 or m.dtype.is_floating_point:
                raise InvalidValueError("KernelAttnProcessor supports only boolean key-padding attention masks")
            padding = m
        out = kernel_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), spec=spec,
                               key_padding_mask=padding, backend=self.backend)
        return out.transpose(1, 2)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        from diffusers.models.transformers.transformer_wan import _get_added_kv_projections, _get_qkv_projections

        self_attention = encoder_hidden_states is None
        encoder_hidden_states_img = None
        if attn.add_k_proj is not None:
            image_context_length = encoder_hidden_states.shape[1] - WAN_TEXT_TOKENS
            encoder_hidden_states_img = encoder_hidden_states[:, :image_context_length]
            encoder_hidden_states = encoder_hidden_states[:, image_context_length:]

        query, key, value = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))

        if rotary_emb is not None:
            query = _apply_rotary_emb(query, *rotary_emb)
            key = _apply_rotary_emb(key, *rotary_emb)

        hidden_states_img = None
        if encoder_hidden_states_img is not None:
            key_img, value_img = _get_added_kv_projections(attn, encoder_hidden_states_img)
            key_img = attn.norm_added_k(key_img)
            key_img = key_img.unflatten(2, (attn.heads, -1))
            value_img = value_img.unflatten(2, (attn.heads, -1))
            hidden_states_img = self._attend(query, key_img, value_img).flatten(2, 3).type_as(query)

        spec = self.spec() if self_attention else None
        hidden_states = self._attend(query, key, value, spec=spec, mask=attention_mask)
        hidden_states = hidden_states.flatten(2, 3).type_as(query)
        if hidden_states_img is not None:
            hidden_states = hidden_states + hidden_states_img
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        return hidden_states


def _apply_rotary_emb(hidden_states, freqs_cos, freqs_sin):
    """Wan's rotary embedding on ``(B, L, H, D)`` (interleaved pairs), as in diffusers' processor."""
    import torch

    x1, x2 = hidden_states.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(hidden_states)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(hidden_states)


def _accelerate_available() -> bool:
    from diffusers.utils import is_accelerate_available

    return bool(is_accelerate_available())


def load_transformer(folder: Path, dtype: "torch.dtype"):
    """A ``WanTransformer3DModel`` from a diffusers sub-folder without accelerate: config, then safetensors.

    Parameters of the modules the model keeps in fp32 (``_keep_in_fp32_modules``) stay fp32, as diffusers does.
    Every weight of the model must be present in the files.
    """
    import torch
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    files = sorted(f for f in Path(folder).glob("*.safetensors") if f.name.count(".") == 1)
    if not files:
        raise InputError(f"{folder} has no .safetensors weights (diffusers format expected)")
    model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(folder)))
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise InputError(f"{folder}: {len(missing)} transformer weights are missing from the files "
                         f"(e.g. {', '.join(missing[:3])}); the checkpoint is incomplete or of another model")
    if unexpected:
        log.warning("%s: %d unexpected weights ignored (e.g. %s)", folder, len(unexpected), unexpected[:3])
    model.to(dtype)
    keep = WanTransformer3DModel._keep_in_fp32_modules or []
    for name, param in model.named_parameters():
        if any(k in name for k in keep):
            param.data = param.data.to(torch.float32)
    return model.eval()


def check_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Validate a diffusers Wan first-last-frame folder; returns its ``model_index.json``. Raises ``InputError``."""
    folder = Path(model_dir)
    if not folder.is_dir():
        raise InputError(f"model folder {folder} does not exist: give a local diffusers folder of a Wan2.1 "
                         "first-last-frame model (e.g. a download of Wan2.1-FLF2V-14B-720P-Diffusers)")
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise InputError(f"{folder} has no model_index.json: it is not a diffusers pipeline folder")
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{index_path} cannot be read as JSON: {exc}") from None
    cls = index.get("_class_name")
    if cls != PIPELINE_CLASS:
        raise InputError(f"{folder} holds a {cls!r} pipeline; the neural generator needs a {PIPELINE_CLASS} "
                         "(Wan2.1 FLF2V or I2V in diffusers format)")
    missing = []
    for name in REQUIRED_COMPONENTS:
        entry = index.get(name)
        if not entry or entry[0] is None or not (folder / name).is_dir() or not any((folder / name).iterdir()):
            missing.append(name)
    for name in ("image_encoder", "image_processor"):
        entry = index.get(name)
        if entry and entry[0] is not None and not (folder / name).is_dir():
            missing.append(name)
    if missing:
        raise InputError(f"{folder} is missing pipeline component(s): {', '.join(missing)} (each is a sub-folder "
                         "named in model_index.json); copy the complete diffusers folder")
    return index


PREPARED_CLIPS = 3
"""Generated sub-clip videos kept for live mode (the one playing and the ones prepared after it)."""


class NeuralGenerator:
    """First-last-frame video diffusion between keyframes, with the audio-driven parametric mouth composited in.

    Implements ``types.Generator``. See the module doc for the frame-count, size, endpoint and lip-sync rules.
    """

    def __init__(
        self,
        model_dir: str | Path,
        avatar: "Avatar | None" = None,
        size: tuple[int, int] = (512, 512),
        seed: int = 0,
        device: str | None = None,
        dtype: "str | torch.dtype | None" = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 5.0,
        prompt: str = DEFAULT_PROMPT,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        max_frames: int = 81,
        generation_size: tuple[int, int] | None = None,
        endpoint_blend_frames: int = 4,
        composite_mouth: bool = True,
        track_mouth: bool = True,
        attention_window: tuple[int, int] | None = None,
        attention_backend: str = "auto",
        cpu_offload: bool = False,
    ) -> None:
        index = check_model_dir(model_dir)
        try:
            import torch
            from diffusers import WanImageToVideoPipeline
        except ImportError as exc:
            raise MissingDependencyError(
                f"the neural generator needs the 'gpu' extra ({exc.name} is not installed): "
                "pip install torch==2.13.0 first, then pip install 'avatarcast[gpu]'") from None

        w, h = int(size[0]), int(size[1])
        if w < 16 or h < 16:
            raise InputError(f"output size {w}x{h} is too small for the neural generator (16 px minimum)")
        if num_inference_steps < 1:
            raise InputError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.size = (w, h)
        self.seed = int(seed)
        self.model_dir = Path(model_dir)
        self.num_inference_steps = int(num_inference_steps)
        self.guidance_scale = float(guidance_scale)
        self.max_frames = int(max_frames)
        self.endpoint_blend_frames = max(1, int(endpoint_blend_frames))
        self.composite_mouth = composite_mouth
        self.track_mouth = track_mouth
        self.gen_size = rounded_size(generation_size or self.size)

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype is None:
            self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        else:
            self.dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

        if avatar is None:
            avatar = load_avatar(None)
        self.parametric = ParametricGenerator(avatar, size=self.size, seed=self.seed)
        # live mode: the videos of sub-clips asked for or prepared, by what they are generated from; the pipeline
        # runs in one worker thread (its scheduler keeps state between steps: one generation at a time)
        self._videos: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, Future]] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None

        try:
            components = {}
            if not _accelerate_available():
                # diffusers loads Wan transformers (which keep some modules in fp32) only through accelerate;
                # without it, build them from their config and load the safetensors ourselves
                for name in ("transformer", "transformer_2"):
                    entry = index.get(name)
                    if entry and entry[0] is not None:
                        components[name] = load_transformer(self.model_dir / name, self.dtype)
            pipe = WanImageToVideoPipeline.from_pretrained(str(self.model_dir), local_files_only=True,
                                                           torch_dtype=self.dtype, **components)
        except (OSError, ValueError, KeyError) as exc:
            raise InputError(f"the model in {self.model_dir} cannot be loaded: {exc}") from None
        if getattr(pipe.transformer.config, "image_dim", None) is not None and (
                pipe.image_encoder is None or pipe.image_processor is None):
            raise InputError(f"{self.model_dir}: this transformer takes CLIP image embeddings, but the folder has no "
                             "image_encoder/image_processor; copy the complete diffusers folder")
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)
        else:
            pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe
        self.temporal_factor = int(pipe.vae_scale_factor_temporal)

        self.processor = KernelAttnProcessor(window=attention_window, backend=attention_backend)
        pipe.transformer.set_attn_processor(self.processor)
        patch = tuple(pipe.transformer.config.patch_size)

        def _layout_hook(module, args, kwargs):
            latent = kwargs.get("hidden_states", args[0] if args else None)
            if latent is not None:
                self.processor.tokens_per_frame = (latent.shape[-2] // patch[1]) * (latent.shape[-1] // patch[2])

        self._hook = pipe.transformer.register_forward_pre_hook(_layout_hook, with_kwargs=True)

        # the prompts are the same for every clip: encode them once
        self.prompt_embeds = self.encode_text(prompt)
        self.negative_prompt_embeds = self.encode_text(negative_prompt) if self.guidance_scale > 1.0 else None
        log.info("neural generator: %s on %s (%s), generating at %dx%d, %d steps", self.model_dir,
                 self.device, str(self.dtype).split(".")[-1], *self.gen_size, self.num_inference_steps)

    def encode_text(self, text: str) -> "torch.Tensor":
        """UMT5 embeddings of a prompt as Wan's pipeline makes them (``(1, 512, C)``, zeros after the text).

        Done here rather than by ``pipe.encode_prompt`` because diffusers cleans prompts with ``ftfy``, an extra
        dependency; our prompts are plain text, so whitespace and HTML-entity cleaning is all they need.
        """
        import torch

        text = re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()
        tokens = self.pipe.tokenizer([text], padding="max_length", max_length=WAN_TEXT_TOKENS, truncation=True,
                                     add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
        encoder = self.pipe.text_encoder
        device = next(encoder.parameters()).device
        with torch.no_grad():
            hidden = encoder(tokens.input_ids.to(device), tokens.attention_mask.to(device)).last_hidden_state
        n_tokens = int(tokens.attention_mask.gt(0).sum())
        hidden = hidden.to(dtype=self.dtype, device=self.device)
        hidden[:, n_tokens:] = 0.0
        return hidden

    # ------------------------------------------------------------------------------------------------ keyframes
    def keyframe_image(self, image: np.ndarray | None, state: AvatarState, frame_index: int, fps: float
                       ) -> np.ndarray:
        """The keyframe's own image (resized to the output size if needed), else the parametric rendering."""
        if image is None:
            return self.parametric.render_state(state, frame_index, fps=fps)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"keyframe images must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        return image

    # ------------------------------------------------------------------------------------------------ frames
    def generate(self, first: np.ndarray, last: np.ndarray, n_generated: int, seed: int) -> np.ndarray:
        """Raw model output: ``(n_generated, H, W, 3)`` float32 in [0, 255] at the output size."""
        import torch
        from PIL import Image

        gw, gh = self.gen_size
        to_pil = lambda a: Image.fromarray(cv2.resize(a, (gw, gh), interpolation=cv2.INTER_AREA)  # noqa: E731
                                           if (a.shape[1], a.shape[0]) != (gw, gh) else a)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        with torch.no_grad():
            out = self.pipe(
                image=to_pil(first), last_image=to_pil(last), height=gh, width=gw, num_frames=n_generated,
                num_inference_steps=self.num_inference_steps, guidance_scale=self.guidance_scale,
                prompt_embeds=self.prompt_embeds, negative_prompt_embeds=self.negative_prompt_embeds,
                generator=generator, output_type="np", max_sequence_length=WAN_TEXT_TOKENS,
            )
        video = np.asarray(out.frames[0], dtype=np.float32) * 255.0  # (F, gh, gw, 3)
        if (gw, gh) != self.size:
            video = np.stack([cv2.resize(f, self.size, interpolation=cv2.INTER_AREA) for f in video])
        return np.clip(video, 0.0, 255.0)

    def clip_seed(self, clip: ClipSpec) -> int:
        """The diffusion noise seed of a clip: from the generator's seed, the clip's seed and its position."""
        mixed = np.random.SeedSequence([self.seed & 0xFFFFFFFF, clip.seed & 0xFFFFFFFF, clip.start_frame])
        return int(mixed.generate_state(1, dtype=np.uint32)[0])

    def prepare(self, clip: ClipSpec) -> None:
        """Start generating ``clip``'s video in the background (live mode: a sub-clip ahead of playback); ``render``
        takes it from there. The keyframe images are rendered now, in the caller's thread."""
        self._prepared(clip)

    def _prepared(self, clip: ClipSpec) -> tuple[np.ndarray, np.ndarray, Future]:
        key = (clip.start_frame, clip.n_frames, clip.fps, clip.first.state, clip.last.state, clip.seed)
        entry = self._videos.get(key) if clip.first.image is None and clip.last.image is None else None
        if entry is not None:
            self._videos.move_to_end(key)
            return entry
        first, last = self._keyframe_images(clip)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="neural-generate")
        n_gen = generation_frames(clip.n_frames, self.temporal_factor, self.max_frames)
        entry = (first, last, self._pool.submit(self.generate, first, last, n_gen, self.clip_seed(clip)))
        self._videos[key] = entry
        while len(self._videos) > PREPARED_CLIPS:
            self._videos.popitem(last=False)[1][2].cancel()
        return entry

    def _keyframe_images(self, clip: ClipSpec) -> tuple[np.ndarray, np.ndarray]:
        return (self.keyframe_image(clip.first.image, clip.first.state, clip.start_frame, clip.fps),
                self.keyframe_image(clip.last.image, clip.last.state, clip.start_frame + clip.n_frames, clip.fps))

    def render(self, clip: ClipSpec, *, start: int = 0) -> Iterator[np.ndarray]:
        """Yield RGB uint8 frames ``start .. clip.n_frames - 1``; frame 0 is the first keyframe image exactly. The
        clip's video is generated when the first frame is asked for (the whole clip at once), unless ``prepare``
        started it before; the mouth of each frame is composited when that frame is asked for (a streamed mouth row
        is read then)."""
        if clip.mouth_streamed:  # live: the video may be prepared, and a clip reopened part-way is not made twice
            first, last, pending = self._prepared(clip)
            video = pending.result()
        else:
            first, last = self._keyframe_images(clip)
            n_gen = generation_frames(clip.n_frames, self.temporal_factor, self.max_frames)
            video = self.generate(first, last, n_gen, self.clip_seed(clip))

        mouth_frames = self.parametric.render(clip, start=start) if self.composite_mouth else None
        for i in range(start, clip.n_frames):
            mouth_frame = next(mouth_frames) if mouth_frames is not None else None
            if i == 0 and not clip.mouth_streamed:  # live: the mouth of the speech goes onto frame 0 as well
                yield first.copy()
                continue
            frame = timeline_frame(video, first, last, clip.n_frames, i, self.endpoint_blend_frames)
            if mouth_frame is not None:
                frame = self.composite(frame, mouth_frame, self.mouth_points(clip, i))
            yield frame

    # ------------------------------------------------------------------------------------------------ lip sync
    def mouth_points(self, clip: ClipSpec, i: int) -> np.ndarray:
        """The parametric frame's landmark positions (output pixels) for frame ``i`` of the clip."""
        state = self.parametric.frame_state(clip, i)
        positions = self.parametric.rig.positions(state, self.parametric.idle.at(clip.frame_time_s(i)))
        return np.nan_to_num(np.asarray(positions, np.float32)[:, :2], nan=0.0)

    def mouth_mask(self, points: np.ndarray) -> np.ndarray:
        """Feathered float32 (H, W) mask in [0, 1] over the mouth, its surrounding skin and the chin below it."""
        w, h = self.size
        outer = np.concatenate([points[LIPS_UPPER_OUTER], points[LIPS_LOWER_OUTER[::-1]]])
        mouth_w = max(float(np.linalg.norm(points[291] - points[61])), 4.0)
        centre = outer.mean(axis=0)
        grown = centre + (outer - centre) * (1.0 + 2.0 * MOUTH_MARGIN)
        lower = outer[:, 1] >= centre[1]
        grown[lower, 1] += MOUTH_CHIN_EXTENT * mouth_w
        mask = np.zeros((h, w), np.float32)
        cv2.fillPoly(mask, [np.round(grown).astype(np.int32)], 1.0, lineType=cv2.LINE_AA)
        sigma = max(MOUTH_FEATHER * mouth_w, 1.0)
        mask = cv2.GaussianBlur(mask, (0, 0), sigma)
        return np.clip(mask, 0.0, 1.0)

    def _track(self, frame: np.ndarray, points: np.ndarray) -> np.ndarray | None:
        """Similarity transform (2x3) from parametric to neural-frame geometry, or None if no reliable face."""
        try:
            faces = detect_faces(frame)
            if not faces:
                return None
            centre = points[ALIGN_POINTS].mean(axis=0)
            face = min(faces, key=lambda f: float(np.hypot(f.center[0] - centre[0], f.center[1] - centre[1])))
            neural = face_landmarks(frame, face)[:, :2].astype(np.float32)
        except Exception as exc:  # the tracker is an optional refinement: never fail a render for it
            log.debug("mouth tracking skipped: %s", exc)
            return None
        src, dst = points[ALIGN_POINTS].astype(np.float32), neural[ALIGN_POINTS]
        matrix, _ = cv2.estimateAffinePartial2D(src, dst)
        if matrix is None:
            return None
        scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
        face_w = float(np.linalg.norm(points[454] - points[234])) or 1.0
        shift = float(np.linalg.norm(matrix @ np.append(centre, 1.0) - centre))
        if not (0.8 < scale < 1.25) or shift > 0.25 * face_w:
            return None
        return matrix

    def composite(self, neural: np.ndarray, parametric: np.ndarray, points: np.ndarray) -> np.ndarray:
        """Paste the parametric mouth region onto the neural frame (aligned, colour-matched, feathered)."""
        mask = self.mouth_mask(points)
        patch = parametric
        if self.track_mouth:
            matrix = self._track(neural, points)
            if matrix is not None:
                w, h = self.size
                patch = cv2.warpAffine(parametric, matrix, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE)
                mask = cv2.warpAffine(mask, matrix, (w, h), flags=cv2.INTER_LINEAR)
        patch = patch.astype(np.float32)
        base = neural.astype(np.float32)
        band = (mask > 0.05) & (mask < 0.5)  # the outer feather: skin both images should agree on
        if band.sum() >= 16:
            patch += (base[band] - patch[band]).mean(axis=0)
        out = base + mask[..., None] * (patch - base)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
