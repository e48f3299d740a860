"""The video generator: a prepared recording plays as the base, and its lower face is re-synthesised from the mouth
bank for the mouth shape the audio asks for (implements ``types.Generator``).

For each output frame at time ``t``:

1. the base frame the footage shows at ``t`` (``VideoAvatar.base_index``: forward, then backward), framed to the
   output size once for the whole recording (the camera does not move, so neither does the framing);
2. the mouth: the clip's mouth-analyzer rows are mapped to target shapes (opening, width, jaw drop) by the mapping
   learned from the footage's own audio, and a bank entry is chosen per frame by a dynamic programme (Viterbi over
   the best candidates of each frame) that trades the shape match, the head-pose match and the recording (the base
   frame's own, where it has the shape) against continuity: the next frame of the same recording costs nothing,
   holding a frame costs a little, any other jump more. A multi-frame clip starts and ends on the entry the shape
   alone picks for its first and last keyframes, so clips rendered apart join on the same entry; a live sub-clip,
   whose mouth rows arrive with the speech (``ClipSpec.mouth_streamed``), picks each frame's entry when the frame is
   asked for, from its row and the entry before it;
3. the chosen lower face (lips, teeth, jaw and chin) is mapped from the canonical face onto the base frame by an
   affine fit on points speech does not move (eye corners, nose bridge, cheeks), colour-matched to the base frame in
   the band where they meet, and blended with a feathered mask that covers both chins (the bank's and the base's),
   stops under the nose and stays inside the face outline at the sides. In silence the target is the footage's
   resting, closed mouth, so the face keeps moving with the footage and never freezes.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import cv2
import numpy as np

from avatarcast.core.errors import InputError
from avatarcast.core.trajectory import clip_state, smoothstep
from avatarcast.core.types import MOUTH_FIELDS, ClipSpec
from avatarcast.face.video_avatar import (EYE_L_CORNERS, EYE_R_CORNERS, JAW_LINE, LIP_POINTS, MATCH_FIELDS,
                                              STABLE_POINTS, UNDER_NOSE, VideoAvatar, affine_fit, apply_affine)
from avatarcast.generators.parametric.framing import plan_framing
from avatarcast.generators.video.head_motion import HeadMotion

MAX_SIZE_PX = 4096
CANDIDATES = 24
"""Bank entries considered per frame by the dynamic programme (the best by shape and pose)."""
SHAPE_WEIGHTS = np.array([1.0, 0.5, 0.6], np.float64)  # opening, width, jaw drop (per squared standard deviation)
POSE_WEIGHT = 0.5  # per squared 10 degrees of yaw or pitch between the bank entry and the base frame
POSE_SCALE_DEG = 10.0
OTHER_RECORDING_COST = 2.0
"""Added to an entry from another recording than the base frame's: a mouth from the base frame's own recording
matches its light, focus and scale. Another recording's mouth pasted in reads as less open than it is (dlib on the
weekly-address footage: 0.03 eye distances less, where the base's own recording's mouths read as labelled), so it
is taken only where the base frame's recording lacks the shape by more than about 1.4 standard deviations."""
COST_NEXT = 0.0  # the next frame of the same recording
COST_HOLD = 0.35  # the same entry again
COST_JUMP = 1.0  # any other entry
UNDER_NOSE_GAP_IOD = 0.10
"""The replaced region starts this far below the nostrils (in eye distances), so the nose is always the base's."""
SIDE_INSET = 0.88
CHIN_EXTEND = 1.12
"""The jaw line is pulled in at the sides (the face outline stays the base's) and pushed out under the chin (the
region covers the lowest chin of the two)."""
FEATHER_IOD = 0.09
GAIN_RANGE = (0.85, 1.18)
MOUTH_ANCHOR_WEIGHT = 3.0
"""Weight of the points under the nose and the mouth corners in the placement fit (the still points weigh 1)."""
UPPER_LIP_SHARE = 0.2
CLOSE_LIMIT = 0.7
"""The mouth is closed by at most this share of the chosen entry's opening (lips pressed further would overlap)."""
OPEN_LIMIT_IOD = 0.08
"""...and opened by at most this many eye distances (beyond that the stretched inside of the mouth shows)."""
SMILE_WIDTH_SD = 1.2
"""A full smile (1.0) asks for a mouth this many standard deviations of the bank's widths wider (a frown: narrower)."""
MASK_SCALE_DOWN = 4
BASE_CACHE_FRAMES = 4
BANK_CACHE_ENTRIES = 96


class VideoGenerator:
    """Renders a ``VideoAvatar`` at ``size`` = (width, height) (see the module docstring)."""

    reuses_buffer = False

    def __init__(self, avatar: VideoAvatar, size: tuple[int, int] = (512, 512), seed: int = 0,
                 fps: float = 25.0) -> None:
        w, h = int(size[0]), int(size[1])
        if not (16 <= w <= MAX_SIZE_PX and 16 <= h <= MAX_SIZE_PX):
            raise InputError(f"output size {w}x{h} is out of range: use 16..{MAX_SIZE_PX} pixels per side")
        if not isinstance(avatar, VideoAvatar):
            raise InputError("the video generator needs a video avatar (one prepared from footage of the person talking)")
        self.avatar = avatar
        self.size = (w, h)
        self.seed = int(seed)
        self.fps = float(fps)
        lm = avatar.base_landmarks[:, :468, :2]
        box = (float(np.percentile(lm[:, :, 0].min(1), 5)), float(np.percentile(lm[:, :, 1].min(1), 5)),
               float(np.percentile(lm[:, :, 0].max(1), 95)), float(np.percentile(lm[:, :, 1].max(1), 95)))
        self.framing = plan_framing(avatar.frame_size, box, self.size)
        s = self.framing.scale
        # decode the JPEGs at 1/2, 1/4 or 1/8 size where the output is that much smaller (much faster)
        self.reduce = 1
        for r in (8, 4, 2):
            if s * r <= 1.0:
                self.reduce = r
                break
        sr = s * self.reduce
        self._frame_map = np.array([[sr, 0.0, self.framing.offset_x], [0.0, sr, self.framing.offset_y]], np.float64)
        # base landmarks in output pixels
        nb = len(avatar.base_landmarks)
        flat = avatar.base_landmarks[:, :, :2].reshape(-1, 2)
        self._crop = None
        if self.reduce == 1:
            # a whole-pixel crop scaled with cv2.resize (several times faster than warpAffine at 1080p); the points
            # follow the same map, pixel centres included
            src_w, src_h = avatar.frame_size
            cw, ch = min(int(round(w / s)), src_w), min(int(round(h / s)), src_h)
            cx0 = int(np.clip(math.floor(-self.framing.offset_x / s), 0, src_w - cw))
            cy0 = int(np.clip(math.floor(-self.framing.offset_y / s), 0, src_h - ch))
            self._crop = (cx0, cy0, cw, ch)
            scale = np.array([w / cw, h / ch], np.float32)
            self.base_points = ((flat - [cx0, cy0] + 0.5) * scale - 0.5).astype(np.float32).reshape(nb, -1, 2)
        else:
            self.base_points = self.framing.apply(flat).reshape(nb, -1, 2)
        self.base_iod = np.linalg.norm(self.base_points[:, list(EYE_L_CORNERS)].mean(1)
                                       - self.base_points[:, list(EYE_R_CORNERS)].mean(1), axis=1)
        shapes = avatar.bank_shape[:, list(MATCH_FIELDS)].astype(np.float64)
        self._shapes = shapes
        self._sigma = np.maximum(shapes.std(0), 0.01)
        self._pose = avatar.bank_pose[:, :2].astype(np.float64)
        self._next = avatar.bank_next
        ox, oy = avatar.crop_origin
        self._crop_origin = np.array([ox, oy], np.float64)
        self._anchor_points = np.concatenate([STABLE_POINTS, UNDER_NOSE, LIP_POINTS[2:]])
        self._anchor_weights = np.concatenate([np.ones(len(STABLE_POINTS)),
                                               np.full(len(UNDER_NOSE) + 2, MOUTH_ANCHOR_WEIGHT)])
        self.motion = HeadMotion(self.size)
        self._base_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._bank_cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._last_frame: int | None = None
        self._last_entry: int | None = None
        self.chosen: list[int] = []  # the entries of the latest clip (for tools and tests)

    # ------------------------------------------------------------------------------------------------- choice
    def _unary(self, targets: np.ndarray, base_ids: np.ndarray) -> np.ndarray:
        """``(T, N)`` cost of each bank entry for each frame: shape mismatch, head-pose mismatch, and another
        recording than the base frame's."""
        d = (self._shapes[None, :, :] - targets[:, None, :]) / self._sigma
        cost = (d * d * SHAPE_WEIGHTS).sum(-1)
        pose = self.avatar.base_pose[base_ids, :2].astype(np.float64)
        dp = (self._pose[None, :, :] - pose[:, None, :]) / POSE_SCALE_DEG
        other = self.avatar.bank_clip[None, :] != self.avatar.base_clip[base_ids][:, None]
        return cost + POSE_WEIGHT * (dp * dp).sum(-1) + OTHER_RECORDING_COST * other

    def _transition(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``(len(a), len(b))`` cost of going from entries ``a`` to entries ``b``."""
        cost = np.full((len(a), len(b)), COST_JUMP)
        cost[a[:, None] == b[None, :]] = COST_HOLD
        cost[self._next[a][:, None] == b[None, :]] = COST_NEXT
        return cost

    def choose(self, targets: np.ndarray, base_ids: np.ndarray, prev: int | None = None,
               end: int | None = None) -> list[int]:
        """Bank entries for consecutive frames (Viterbi over each frame's best candidates)."""
        unary = self._unary(targets, base_ids)
        t_n, n = unary.shape
        k = min(CANDIDATES, n)
        cands = []
        for t in range(t_n):
            c = np.argpartition(unary[t], k - 1)[:k] if k < n else np.arange(n)
            extra = []
            if t == 0 and prev is not None:
                extra = [prev, int(self._next[prev])]
            c = np.unique(np.concatenate([c, [e for e in extra if e >= 0]]).astype(np.int64))
            cands.append(c)
        acc = unary[0, cands[0]].copy()
        if prev is not None:
            acc += self._transition(np.array([prev]), cands[0])[0]
        back = []
        for t in range(1, t_n):
            total = acc[:, None] + self._transition(cands[t - 1], cands[t])
            arg = total.argmin(0)
            back.append(arg)
            acc = total[arg, np.arange(len(cands[t]))] + unary[t, cands[t]]
        if end is not None:
            acc = acc + self._transition(cands[-1], np.array([end]))[:, 0]
        j = int(acc.argmin())
        path = [int(cands[-1][j])]
        for t in range(t_n - 1, 0, -1):
            j = int(back[t - 1][j])
            path.append(int(cands[t - 1][j]))
        return path[::-1]

    def anchor(self, row: np.ndarray, base_id: int) -> int:
        """The entry the shape and pose alone pick for a mouth-analyzer row (what clips rendered apart agree on at
        their joins)."""
        return self._shape_choice(self.avatar.map_rows(np.asarray(row).reshape(1, 3))[0], base_id)

    def _shape_choice(self, target: np.ndarray, base_id: int) -> int:
        return int(self._unary(target.reshape(1, -1), np.array([base_id]))[0].argmin())

    # ----------------------------------------------------------------------------------------------- pictures
    def _base_frame(self, i: int) -> np.ndarray:
        """Base frame ``i`` framed to the output size (the footage's frames repeat at higher output rates)."""
        return _cached(self._base_cache, i, self._frame_base, BASE_CACHE_FRAMES)

    def _frame_base(self, i: int) -> np.ndarray:
        src = self.avatar.base_pack.read(i, self.reduce)
        if self._crop is not None:
            x0, y0, cw, ch = self._crop
            return cv2.resize(src[y0:y0 + ch, x0:x0 + cw], self.size, interpolation=cv2.INTER_LINEAR)
        return cv2.warpAffine(src, self._frame_map, self.size, flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)

    def _bank_crop(self, k: int) -> np.ndarray:
        """Bank entry ``k``'s canonical lower face (entries recur: holds and the recording's own next frames)."""
        return _cached(self._bank_cache, k, self.avatar.bank_pack.read, BANK_CACHE_ENTRIES)

    def _region(self, base_id: int, jaw_bank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The polygons (base chin, bank chin) of the replaced lower face, in output pixels."""
        pts = self.base_points[base_id]
        iod = float(self.base_iod[base_id])
        ex = pts[list(EYE_L_CORNERS)].mean(0) - pts[list(EYE_R_CORNERS)].mean(0)
        ex = ex / max(float(np.linalg.norm(ex)), 1e-6)
        ey = np.array([-ex[1], ex[0]], np.float32)
        nose = pts[UNDER_NOSE] + ey * (UNDER_NOSE_GAP_IOD * iod)
        centre = nose.mean(0) + ey * (0.45 * iod)

        def shaped(jaw: np.ndarray) -> np.ndarray:
            rel = jaw - centre
            down = np.clip((rel @ ey) / np.maximum(np.linalg.norm(rel, axis=1), 1e-6), 0.0, 1.0)
            f = SIDE_INSET + (CHIN_EXTEND - SIDE_INSET) * down ** 2
            return centre + rel * f[:, None]

        jaw_base = shaped(pts[JAW_LINE])
        jaw_b = shaped(jaw_bank)
        # the top edge: from the jaw line's upper ends inward to the points under the nose
        top_r = jaw_base[-1] + 0.0
        top = np.array([top_r, nose[2], nose[1], nose[0]], np.float32)
        return (np.concatenate([jaw_base, top]).astype(np.float32),
                np.concatenate([jaw_b, top]).astype(np.float32))

    @staticmethod
    def _mask(poly_base: np.ndarray, poly_bank: np.ndarray, origin: tuple[int, int], size: tuple[int, int],
              feather: float) -> np.ndarray:
        """The blend weights (float32, 0..1) over the region: the union of both polygons, shrunk by the feather
        width and blurred by it, so the weight reaches 0 at the polygons' edges. Built at a quarter of the size (a
        smooth mask loses nothing) and scaled up."""
        rw, rh = size
        q = MASK_SCALE_DOWN if feather >= 2 * MASK_SCALE_DOWN else 1
        small = np.zeros(((rh + q - 1) // q, (rw + q - 1) // q), np.uint8)
        o = np.array(origin, np.float32)
        for poly in (poly_base, poly_bank):
            cv2.fillPoly(small, [np.round((poly - o) / q * 16).astype(np.int32)], 255, cv2.LINE_AA, shift=4)
        f = feather / q
        grow = int(round(f))
        if grow >= 1:
            small = cv2.erode(small, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
        small = cv2.GaussianBlur(small.astype(np.float32) * (1.0 / 255.0), (0, 0), max(f, 0.5))
        if q == 1:
            return small
        return cv2.resize(small, (rw, rh), interpolation=cv2.INTER_LINEAR)

    def _jaw_field(self, entry: int, target_opening: float | None):
        """The vertical displacement (canonical pixels, + down) that opens or closes the entry's mouth to the target
        opening: the upper lip takes ``UPPER_LIP_SHARE`` of the change, the lower lip, jaw and chin the rest, fading
        out above the upper lip, below the chin and toward the cheeks. ``None`` when there is nothing to change."""
        if target_opening is None:
            return None
        av = self.avatar
        iod = av.canon_iod
        current = float(self._shapes[entry, 0])
        delta = (target_opening - current) * iod
        delta = float(np.clip(delta, -CLOSE_LIMIT * current * iod, OPEN_LIMIT_IOD * iod))
        if abs(delta) < 0.3:
            return None
        up_y, low_y = float(av.bank_lips[entry, 0, 1]), float(av.bank_lips[entry, 1, 1])
        cx = float(av.bank_lips[entry, 2:, 0].mean())
        half_w = 0.5 * float(np.ptp(av.bank_jaw[entry, :, 0]))
        nose_y = float(av.bank_under_nose[entry, :, 1].max())
        chin_y = float(av.bank_jaw[entry, :, 1].max())
        ys = np.array([nose_y, up_y, low_y, chin_y, chin_y + 0.6 * iod], np.float64)
        ys = np.maximum.accumulate(ys + np.arange(5) * 1e-3)
        ds = np.array([0.0, -UPPER_LIP_SHARE * delta, (1.0 - UPPER_LIP_SHARE) * delta,
                       (1.0 - UPPER_LIP_SHARE) * delta, 0.0])
        return ys, ds, cx, half_w

    @staticmethod
    def _field_at(field, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        ys, ds, cx, half_w = field
        dy = np.interp(v, ys, ds)
        x = np.clip((np.abs(u - cx) / max(half_w, 1e-3) - 0.55) / 0.4, 0.0, 1.0)
        return dy * (1.0 - smoothstep(x))

    def compose(self, base_id: int, entry: int, target_opening: float | None = None) -> np.ndarray:
        """One output frame: base frame ``base_id`` with bank entry ``entry`` as its lower face, its mouth opened or
        closed to ``target_opening`` (eye distances; ``None``: as the entry shows it)."""
        out = self._base_frame(base_id).copy()
        av = self.avatar
        # registered on the still points and on where the base face's own mouth sits (under the nose, the corners)
        src = np.concatenate([av.bank_stable[entry], av.bank_under_nose[entry], av.bank_lips[entry, 2:]])
        dst = self.base_points[base_id][self._anchor_points]
        a = affine_fit(src, dst, self._anchor_weights)
        field = self._jaw_field(entry, target_opening)
        jaw_canon = av.bank_jaw[entry].astype(np.float64)
        if field is not None:
            jaw_canon = jaw_canon + np.stack([np.zeros(len(jaw_canon)),
                                              self._field_at(field, jaw_canon[:, 0], jaw_canon[:, 1])], 1)
        jaw_bank = apply_affine(a, jaw_canon)
        poly_base, poly_bank = self._region(base_id, jaw_bank)
        iod = float(self.base_iod[base_id])
        feather = max(1.0, FEATHER_IOD * iod)
        pad = 2  # the weights fall to 0 inside the polygons (see _mask)
        both = np.concatenate([poly_base, poly_bank])
        w, h = self.size
        x0, y0 = np.floor(both.min(0)).astype(int) - pad
        x1, y1 = np.ceil(both.max(0)).astype(int) + pad
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 - x0 < 4 or y1 - y0 < 4:
            return out
        rw, rh = x1 - x0, y1 - y0
        alpha = self._mask(poly_base, poly_bank, (x0, y0), (rw, rh), feather)
        # one resampling from the crop: output pixel -> canonical (inverse affine) -> minus the jaw field -> crop
        inv = cv2.invertAffineTransform(a)
        gx, gy = np.meshgrid(np.arange(x0, x1, dtype=np.float32), np.arange(y0, y1, dtype=np.float32))
        u = inv[0, 0] * gx + inv[0, 1] * gy + inv[0, 2]
        v = inv[1, 0] * gx + inv[1, 1] * gy + inv[1, 2]
        if field is not None:
            v = v - self._field_at(field, u, v).astype(np.float32)
        map_x = (u - self._crop_origin[0]).astype(np.float32)
        map_y = (v - self._crop_origin[1]).astype(np.float32)
        patch = cv2.remap(self._bank_crop(entry), map_x, map_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
        base = out[y0:y1, x0:x1]
        # colour: match the patch to the base frame in the band where they meet (lighting, white balance)
        band = cv2.inRange(alpha, 0.05, 0.6)
        if cv2.countNonZero(band) > 20:
            mb, mp = cv2.mean(base, mask=band)[:3], cv2.mean(patch, mask=band)[:3]
            gain = np.clip(np.array(mb) / np.maximum(np.array(mp), 1.0), *GAIN_RANGE)
            patch = cv2.multiply(patch, (float(gain[0]), float(gain[1]), float(gain[2]), 0.0))
        out[y0:y1, x0:x1] = cv2.blendLinear(patch, base, alpha, 1.0 - alpha)
        return out

    # ------------------------------------------------------------------------------------------------- frames
    def _rows(self, clip: ClipSpec) -> np.ndarray:
        if clip.mouth is not None:
            return np.asarray(clip.mouth, np.float64)
        return np.stack([_mouth_row(clip.first.state.lerp(clip.last.state, i / clip.n_frames))
                         for i in range(clip.n_frames)])

    def _states(self, clip: ClipSpec) -> list:
        """The director's state at each frame of ``clip`` (``clip_state``, as the parametric generator renders it):
        its head motion, brows and smile apply on top of the footage."""
        return [clip_state(clip, i) for i in range(clip.n_frames)]

    def _with_smile(self, targets: np.ndarray, smiles: np.ndarray) -> np.ndarray:
        """Targets widened for a smile (narrowed for a frown); silence keeps its closed mouth, widened the same."""
        if not np.any(np.abs(smiles) > 1e-3):
            return targets
        out = targets.copy()
        out[:, 1] += SMILE_WIDTH_SD * float(self._sigma[1]) * np.asarray(smiles, np.float64)
        return out

    def render(self, clip: ClipSpec, *, start: int = 0, reuse_buffer: bool = False) -> Iterator[np.ndarray]:
        """Yield frames ``start .. clip.n_frames - 1`` (see the module docstring for how mouths are chosen). A clip
        whose mouth rows are streamed (live) picks each frame's entry when the frame is asked for, from its row and
        the entry before it; otherwise the whole clip's entries are chosen together."""
        if clip.mouth_streamed:
            yield from self._render_streamed(clip, start)
            return
        av = self.avatar
        rows = self._rows(clip)
        states = self._states(clip)
        base_ids = np.array([av.base_index(clip.frame_time_s(i)) for i in range(clip.n_frames)], np.int64)
        targets = self._with_smile(av.map_rows(rows), np.array([s.smile for s in states]))
        continuing = self._last_frame is not None and clip.start_frame == self._last_frame + 1
        if clip.n_frames == 1 and continuing:
            entries = self.choose(targets, base_ids, prev=self._last_entry)
        else:
            # clips rendered apart agree on the entries at their joins: the one the shape alone picks
            entries = [self._shape_choice(targets[0], int(base_ids[0]))]
            if clip.n_frames > 1:
                last = clip.last.state
                end_target = self._with_smile(av.map_rows(_mouth_row(last).reshape(1, 3)), np.array([last.smile]))
                end = self._shape_choice(end_target[0], av.base_index(clip.end_s))
                entries += self.choose(targets[1:], base_ids[1:], prev=entries[0], end=end)
        self.chosen = list(entries)
        for i in range(start, clip.n_frames):
            b, e = int(base_ids[i]), int(entries[i])
            self._last_frame, self._last_entry = clip.start_frame + i, e
            frame = self.compose(b, e, float(targets[i, 0]))
            yield self.motion.apply(frame, self.base_points[b], states[i])

    def _render_streamed(self, clip: ClipSpec, start: int) -> Iterator[np.ndarray]:
        av = self.avatar
        self.chosen = []
        for i in range(start, clip.n_frames):
            state = clip_state(clip, i)  # reads row i of the streamed mouth now
            b = av.base_index(clip.frame_time_s(i))
            target = self._with_smile(av.map_rows(_mouth_row(state).reshape(1, 3)), np.array([state.smile]))
            frame_no = clip.start_frame + i
            if self._last_frame is not None and frame_no == self._last_frame + 1:
                e = self.choose(target, np.array([b], np.int64), prev=self._last_entry)[0]
            else:
                e = self._shape_choice(target[0], b)
            self.chosen.append(int(e))
            self._last_frame, self._last_entry = frame_no, int(e)
            frame = self.compose(b, int(e), float(target[0, 0]))
            yield self.motion.apply(frame, self.base_points[b], state)

    def render_state(self, state, frame_index: int, fps: float | None = None) -> np.ndarray:
        """One frame for ``state`` at absolute frame ``frame_index`` (the mouth from the state's mouth fields; head
        motion, brows and smile from the state too)."""
        t = frame_index / (fps or self.fps)
        b = self.avatar.base_index(t)
        target = self._with_smile(self.avatar.map_rows(_mouth_row(state).reshape(1, 3)), np.array([state.smile]))[0]
        frame = self.compose(b, self._shape_choice(target, b), float(target[0]))
        return self.motion.apply(frame, self.base_points[b], state)


def _mouth_row(state) -> np.ndarray:
    """A state's ``(jaw_open, mouth_wide, mouth_round)``, as the mouth analyzer's rows give them."""
    return np.array([getattr(state, f) for f in MOUTH_FIELDS], np.float64)


def _cached(cache: OrderedDict, key: int, load, limit: int) -> np.ndarray:
    """``cache[key]``, loaded with ``load(key)`` when missing; the least recently used entry goes beyond ``limit``."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = load(key)
        if len(cache) > limit:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value
