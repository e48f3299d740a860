"""Pick a generator by name: ``parametric`` (the embedded CPU default) or ``neural`` (a local diffusers model, GPU).

A video avatar (``avatarcast prepare --video``) is rendered by the video generator whatever CPU generator is asked
for: its frames are the recording's own, with the lower face re-synthesised from its mouth bank.

Imports are lazy so that the parametric path never loads torch, and a missing optional extra is reported as a
``MissingDependencyError`` that says what to install instead of an ImportError traceback.
"""

from __future__ import annotations

from pathlib import Path

from avatarcast.core.errors import InputError, MissingDependencyError
from avatarcast.core.types import Generator
from avatarcast.generators.neural import NeuralGenerator
from avatarcast.generators.parametric.generator import ParametricGenerator
from avatarcast.generators.video.generator import VideoGenerator

GENERATORS = ("parametric", "neural")


def generator_settings(name: str, size: tuple[int, int], seed: int, model_dir: str | Path | None = None) -> dict:
    """A JSON-able description of a generator configuration (for cache keys and logs)."""
    settings: dict = {"name": name, "size": [int(size[0]), int(size[1])], "seed": int(seed)}
    if name == "neural" and model_dir is not None:
        p = Path(model_dir).resolve()
        # the model's identity: its folder and the files' sizes and modification times (weights are too big to hash)
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        settings["model"] = {"dir": str(p),
                             "files": [[str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)]
                                       for f in files]}
    return settings


def check_generator(name: str, model_dir: str | Path | None = None) -> None:
    """Raise the error ``make_generator`` would raise for a missing model folder or extra, without loading it."""
    if name == "parametric":
        return
    if name != "neural":
        raise InputError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
    if model_dir is None:
        raise InputError("the neural `generator` needs `model_dir`: a local diffusers folder of a "
                         "first-last-frame video model (nothing is downloaded)")
    if not Path(model_dir).is_dir():
        raise InputError(f"`model_dir` {model_dir} is not a folder; give the local diffusers model folder")
    import importlib.util

    for module, extra in (("torch", "gpu"), ("diffusers", "gpu")):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError(
                f"the neural `generator` needs the '{extra}' extra ({module} is not installed): "
                "pip install torch==2.13.0 first, then pip install 'avatarcast[gpu]'"
            )


def make_generator(name: str, avatar, size: tuple[int, int], seed: int = 0,
                   model_dir: str | Path | None = None, fps: float | None = None,
                   neural_options: dict | None = None) -> Generator:
    """A generator instance for ``avatar`` at ``size`` = (width, height) (``fps``: the output frame rate, which the
    CPU generators' idle motion and footage timing follow when clips do not say it; ``neural_options``: keyword
    settings of ``NeuralGenerator``, such as ``num_inference_steps``)."""
    if getattr(avatar, "kind", "portrait") == "video":
        if name == "neural":
            raise InputError("the neural generator animates a portrait; a video avatar is rendered from its own "
                             "footage (use the default generator)")

        return VideoGenerator(avatar, size=size, seed=seed, **({"fps": fps} if fps else {}))
    if name == "parametric":
        return ParametricGenerator(avatar, size=size, seed=seed, **({"fps": fps} if fps else {}))
    if name == "neural":
        check_generator(name, model_dir)
        return NeuralGenerator(model_dir, avatar=avatar, size=size, seed=seed, **(neural_options or {}))
    raise InputError(f"unknown generator {name!r}; choose one of: {', '.join(GENERATORS)}")
