"""The real mouth of portrait avatars: interiors from the shipped mouth bank, chosen by mouth shape without flicker,
fitted to the portrait's colour, sharpness and grain; closed in silence; deterministic; a portrait's own teeth kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from avatarcast.core.types import AvatarState, ClipSpec, Keyframe
from avatarcast.face.avatar import prepare_avatar
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.generators.parametric.mouth_bank import BANK_PATH, GRID_U, GRID_V, MouthSampler, load_mouth_bank
from avatarcast.generators.parametric.mouth_interior import MouthInterior, blur_sigma, noise_sigma
from avatarcast.generators.parametric.rig import LIPS_LOWER_INNER, LIPS_UPPER_INNER

NEUTRAL = AvatarState()
STILL = np.zeros(6, np.float32)


@pytest.fixture(scope="module")
def plain(portraits):
    """A portrait with its mouth closed (no teeth of its own): the largest face of two_people.jpg."""
    return prepare_avatar(portraits / "two_people.jpg")


@pytest.fixture(scope="module")
def astronaut(portraits):
    return prepare_avatar(portraits / "astronaut.png")


def _opening_mask(g: ParametricGenerator, state: AvatarState, shrink_px: int = 2) -> np.ndarray:
    """Pixels well inside the opening between the moved inner lips (``shrink_px`` < 0: the opening grown)."""
    _, _, pos = g.rig.displacements(state, STILL)
    poly = np.concatenate([pos[LIPS_UPPER_INNER], pos[LIPS_LOWER_INNER[::-1]]])
    mask = np.zeros((g.size[1], g.size[0]), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    kernel = np.ones((2 * abs(shrink_px) + 1, 2 * abs(shrink_px) + 1), np.uint8)
    if shrink_px > 0:
        mask = cv2.erode(mask, kernel)
    elif shrink_px < 0:
        mask = cv2.dilate(mask, kernel)
    return mask > 0


def _striped_bank(period: int = 10):
    """The shipped bank with every sample's pixels replaced by vertical stripes across the mouth (u)."""
    bank = load_mouth_bank()
    u = np.arange(GRID_U)
    stripe = np.where((u // period) % 2 == 0, 30, 225).astype(np.uint8)
    pixels = np.broadcast_to(stripe[None, None, :, None], (len(bank), GRID_V, GRID_U, 3)).copy()
    return dataclasses.replace(bank, pixels=pixels), stripe


def test_the_shipped_bank_is_small_credited_and_covers_the_openings():
    bank = load_mouth_bank()
    assert BANK_PATH.stat().st_size < 3 * 2**20
    readme = (BANK_PATH.parent / "README.md").read_text(encoding="utf-8")
    assert "Cooke" in readme and "10.5281/zenodo.3625687" in readme and "CC BY 4.0" in readme
    assert len(bank) >= 30 and len(np.unique(bank.speaker)) >= 5
    assert bank.pixels.shape[1:] == (GRID_V, GRID_U, 3)
    assert bank.opening.min() < 0.15 and bank.opening.max() > 0.4
    # real interiors: every sample has structure (teeth, tongue, shadow), none is a flat colour
    assert (bank.pixels.reshape(len(bank), -1, 3).astype(float).std(1).mean(1) > 8).all()


def test_open_mouth_pixels_come_from_the_bank(plain):
    g = ParametricGenerator(plain, size=(512, 512), seed=0)
    state = NEUTRAL.with_(jaw_open=0.8)
    inside = _opening_mask(g, state)
    frame = g._render(state, STILL).astype(float)
    lum = frame.mean(2)[inside]
    assert inside.sum() > 300
    # not flat colours: teeth, tongue and shadow of a real mouth
    assert lum.std() > 15 and np.ptp(np.percentile(lum, [5, 95])) > 50
    # with a bank of vertical stripes the opening shows those stripes across the mouth, at the bank's period
    bank, stripe = _striped_bank()
    g.mouth = MouthInterior(g.framed, g.portrait_landmarks, teeth=None, seed=0, bank=bank)
    striped = g._render(state, STILL).astype(float).mean(2)
    _, _, pos = g.rig.displacements(state, STILL)
    a, b = pos[78], pos[308]
    y = int(round(0.5 * (pos[13, 1] + pos[14, 1])))
    xs = np.arange(int(np.ceil(a[0])) + 2, int(b[0]) - 1)
    u = (xs - a[0]) / (b[0] - a[0])
    expected = stripe[np.minimum((u * GRID_U).astype(int), GRID_U - 1)].astype(float)
    measured = striped[y, xs]
    assert np.corrcoef(measured, expected)[0, 1] > 0.8
    assert np.ptp(measured) > 100


def test_the_mouth_is_closed_in_silence(plain, astronaut):
    for avatar in (plain, astronaut):
        g = ParametricGenerator(avatar, size=(320, 320), seed=1)
        draws = []
        original = g.mouth.draw

        def draw(out, upper, lower, **kw):
            before = out.copy()
            original(out, upper, lower, **kw)
            draws.append(not np.array_equal(before, out))

        g.mouth.draw = draw
        silence = np.zeros((8, 3), np.float32)
        clip = ClipSpec(index=0, first=Keyframe(0.0, NEUTRAL), last=Keyframe(0.32, NEUTRAL.with_(smile=0.4)),
                        fps=25.0, start_frame=0, n_frames=8, mouth=silence)
        list(g.render(clip))
        assert draws == [False] * 8  # nothing painted: the lips are together
        g.render_state(NEUTRAL.with_(jaw_open=0.6), 9)
        assert draws[-1]


def test_render_is_deterministic_and_grain_depends_on_seed_and_frame(plain):
    state = NEUTRAL.with_(jaw_open=0.7, mouth_wide=0.3)
    a = ParametricGenerator(plain, size=(384, 384), seed=5)
    b = ParametricGenerator(plain, size=(384, 384), seed=5)
    assert a.mouth.grain > 0.0  # a photograph has noise; the interior gets the same
    assert np.array_equal(a._render(state, STILL, frame_index=12), b._render(state, STILL, frame_index=12))
    inside = _opening_mask(a, state)
    f12 = a._render(state, STILL, frame_index=12).astype(int)
    f13 = a._render(state, STILL, frame_index=13).astype(int)
    other_seed = ParametricGenerator(plain, size=(384, 384), seed=6)._render(state, STILL, frame_index=12)
    # the grain changes inside the opening only, from frame to frame and with the seed
    around = ~_opening_mask(a, state, -3)
    assert np.array_equal(f12[around], f13[around])
    assert np.abs(f12 - f13)[inside].mean() > 0.2
    assert np.abs(f12 - other_seed.astype(int))[inside].mean() > 0.2
    # and the same frame rendered again (a clip, after other frames) is the same bytes
    clip = ClipSpec(index=0, first=Keyframe(0.0, state), last=Keyframe(0.2, state), fps=25.0, start_frame=12,
                    n_frames=5)
    frames = list(a.render(clip))
    assert np.array_equal(frames[0], a.render_state(state, 12))


def test_a_portrait_with_its_own_teeth_keeps_them(astronaut):
    g = ParametricGenerator(astronaut, size=(512, 512), seed=0)
    assert g.teeth is not None and g.mouth.teeth is g.teeth
    # a striped bank: the strip under the upper lip shows the portrait's teeth, not the stripes; deeper down, the
    # bank shows
    bank, stripe = _striped_bank(period=5)
    g.mouth = MouthInterior(g.framed, g.portrait_landmarks, teeth=g.teeth, seed=0, bank=bank)
    state = NEUTRAL.with_(jaw_open=0.9)
    _, _, pos = g.rig.displacements(state, STILL)
    frame = g._render(state, STILL).astype(float)
    x = int(round(pos[13, 0]))
    y_teeth = int(round(pos[13, 1] + g.teeth.top_px + 0.5 * g.teeth.depth_px))
    ours = frame[y_teeth, x - 20:x + 21].mean(1)
    px, py = g.portrait_landmarks[13, :2]
    theirs = g.framed[int(round(py + g.teeth.top_px + 0.5 * g.teeth.depth_px)),
                      int(round(px)) - 20:int(round(px)) + 21].astype(float).mean(1)
    assert ours.mean() > 150 and np.corrcoef(ours, theirs)[0, 1] > 0.6
    y_deep = int(round(pos[14, 1] - 0.25 * (pos[14, 1] - pos[13, 1])))
    assert np.ptp(frame[y_deep, x - 20:x + 21].mean(1)) > 60  # the stripes below the portrait's teeth


def test_sample_choice_follows_the_shape_without_flicker():
    bank = load_mouth_bank()
    sampler = MouthSampler(bank)
    # a larger opening gets a sample with a larger opening
    small = sampler.choose(0.15, 1.0)
    large = sampler.choose(0.45, 1.0)
    assert bank.opening[small[0][0]] < bank.opening[large[0][0]]
    # sweeping the opening finely: the blend of samples changes continuously (no jump between two frames whose
    # shapes are close), and the same shape always gets the same choice
    openings = np.linspace(0.1, 0.55, 901)
    weights = np.zeros((len(openings), len(bank)))
    for k, o in enumerate(openings):
        for i, w in sampler.choose(float(o), 1.0):
            weights[k, i] += w
        assert sampler.choose(float(o), 1.0) == sampler.choose(float(o), 1.0)
    assert np.allclose(weights.sum(1), 1.0)
    assert np.abs(np.diff(weights, axis=0)).sum(1).max() < 0.3  # a switch would be 1 or more
    # jitter of the shape around a value keeps the sample (and nearly its weight)
    for centre in (0.2, 0.3, 0.4):
        picks = [dict(sampler.choose(centre + e, 1.0 + e)) for e in np.linspace(-0.004, 0.004, 9)]
        assert len({max(p, key=p.get) for p in picks}) <= 2
        keys = set().union(*picks)
        # (a switch from one sample to another would change the weights by 2)
        assert max(sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in keys) for p in picks for q in picks) < 0.75
    # one speaker's samples are preferred (the teeth keep their identity across shapes)
    used = {i for o in openings for i, w in sampler.choose(float(o), 1.0) if w > 0.5}
    assert np.mean(bank.speaker[sorted(used)] == sampler.speaker) > 0.6


def test_a_slowly_opening_mouth_does_not_flicker(plain):
    """Rendered frames while the jaw opens slowly: the interior goes from one sample to the next by a cross-fade
    over a few frames and never goes back to an earlier one (no A-B-A flicker); no single frame-to-frame step makes
    most of the change, and a still shape renders the same interior every frame."""
    g = ParametricGenerator(plain, size=(512, 512), seed=0)
    g.mouth.grain = 0.0  # the grain changes every frame on purpose; the content is what must not jump
    chosen = []
    choose = g.mouth.sampler.choose

    def record(opening, width_ratio):
        pairs = choose(opening, width_ratio)
        chosen.append(max(pairs, key=lambda p: p[1])[0])
        return pairs

    g.mouth.sampler.choose = record
    jaws = np.linspace(0.45, 0.75, 31)
    frames = [g._render(NEUTRAL.with_(jaw_open=float(j)), STILL).astype(float) for j in jaws]
    runs = [k for i, k in enumerate(chosen) if i == 0 or k != chosen[i - 1]]
    assert len(runs) >= 2 and len(set(runs)) == len(runs)  # it moves on, and never back
    steps = []
    for j0, j1, a, b in zip(jaws, jaws[1:], frames, frames[1:]):
        both = _opening_mask(g, NEUTRAL.with_(jaw_open=float(j0))) & _opening_mask(g, NEUTRAL.with_(jaw_open=float(j1)))
        steps.append(float(np.abs(a - b)[both].mean()))
    both = _opening_mask(g, NEUTRAL.with_(jaw_open=0.45)) & _opening_mask(g, NEUTRAL.with_(jaw_open=0.75))
    assert max(steps) < 0.5 * float(np.abs(frames[0] - frames[-1])[both].mean())
    assert np.array_equal(g._render(NEUTRAL.with_(jaw_open=0.6), STILL, frame_index=3),
                          g._render(NEUTRAL.with_(jaw_open=0.6), STILL, frame_index=4))


def test_noise_and_blur_estimates_follow_the_image():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:160, 0:160]
    scene = np.where(((xx // 20) + (yy // 20)) % 2 == 0, 70.0, 180.0)  # sharp edges
    for sigma in (2.0, 6.0):
        noisy = np.clip(scene + rng.normal(0, sigma, scene.shape), 0, 255).astype(np.uint8)
        est = noise_sigma(np.dstack([noisy] * 3))
        assert 0.6 * sigma < est < 1.4 * sigma
    blurs = [blur_sigma(np.dstack([cv2.GaussianBlur(scene, (0, 0), s).astype(np.uint8)] * 3)) for s in (0.8, 1.6, 3.0)]
    assert blurs[0] < blurs[1] < blurs[2]


def test_the_interior_takes_on_a_noisy_portraits_grain(plain):
    clean = ParametricGenerator(plain, size=(512, 512), seed=0)
    rng = np.random.default_rng(1)
    camera_grain = rng.normal(0, 8.0, plain.image.shape[:2])[..., None]  # a camera's grain: mostly in the brightness
    image = np.clip(plain.image.astype(float) + camera_grain, 0, 255).astype(np.uint8)
    noisy = ParametricGenerator(dataclasses.replace(plain, image=image), size=(512, 512), seed=0)
    assert noisy.mouth.look.noise > 2.0 * clean.mouth.look.noise
    assert noisy.mouth.grain > 2.0 * clean.mouth.grain
    # measured on the render: the grain is what changes in the opening from one frame to the next; its level
    # follows the portrait's own noise (the noise added to the photograph, as the framing left it)
    state = NEUTRAL.with_(jaw_open=0.8)
    inside = _opening_mask(clean, state, shrink_px=2)

    def grain(g):
        a = g._render(state, STILL, frame_index=1).astype(float)
        b = g._render(state, STILL, frame_index=2).astype(float)
        return float((a - b)[inside].std() / np.sqrt(2.0))

    portrait_noise = float((noisy.framed.astype(float) - clean.framed.astype(float)).std())
    assert grain(noisy) > 1.6 * grain(clean)
    assert 0.4 * portrait_noise < grain(noisy) < 1.6 * portrait_noise


@pytest.mark.parametrize("striped", [False, True])
def test_extreme_mouths_render_without_invalid_arithmetic(plain, astronaut, striped):
    states = [NEUTRAL.with_(jaw_open=j, mouth_wide=w, mouth_round=r, smile=sm)
              for j in (0.05, 0.5, 1.0, 3.0) for w, r, sm in ((0, 0, 0), (1, 0, 1), (0, 1, -1))]
    for avatar in (plain, astronaut):
        g = ParametricGenerator(avatar, size=(320, 320), seed=2)
        if striped:  # hard edges: the sharpening overshoots
            g.mouth = MouthInterior(g.framed, g.portrait_landmarks, teeth=g.teeth, seed=2, bank=_striped_bank(3)[0])
        with np.errstate(invalid="raise", divide="raise"):
            for i, state in enumerate(states):
                frame = g.render_state(state, i)
                assert frame.dtype == np.uint8


def test_the_build_script_makes_a_loadable_bank_from_real_clips(data_dir, tmp_path):
    import importlib.util

    script = Path(__file__).resolve().parents[2] / "scripts" / "build_mouth_bank.py"
    spec = importlib.util.spec_from_file_location("build_mouth_bank", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    clips = sorted((data_dir / "video" / "grid").glob("*.mpg"))[1:3]
    out = tmp_path / "bank.npz"
    assert module.main([*map(str, clips), "-o", str(out), "--samples", "12", "--per-speaker", "6"]) == 0
    bank = load_mouth_bank(out)
    assert 6 <= len(bank) <= 12 and len(np.unique(bank.speaker)) >= 2
    assert bank.opening.min() >= 0.12 and bank.pixels.std() > 10
    assert all(s.split("#")[0] in {c.name for c in clips} for s in bank.source)


def test_a_missing_bank_names_the_fix(tmp_path: Path):
    from avatarcast.core.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match="build_mouth_bank"):
        load_mouth_bank(tmp_path / "nothing.npz")
