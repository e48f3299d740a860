"""avatarcast packaging. See README.md for the two commands (run the server; run the tests)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

CORE = [
    "numpy==2.4.6",
    "scipy==1.17.1",
    "opencv-python-headless==4.14.0.94",
    # soundfile and soxr: the newest releases that pipecat-ai 1.14 (the `pipecat` extra) accepts
    # (it requires soundfile~=0.13.1 and soxr~=1.0.0); the core works the same with them
    "soundfile==0.13.1",
    "soxr==1.0.0",
    "webrtcvad-wheels==2.0.14.post1",
    "av==18.1.0",
    "aiortc==1.16.0",
    "websockets==17.4",
    "aiohttp==3.14.5",
    "pydantic==2.14.4",
    # Face detection and the 478-point face mesh run Google's MediaPipe face models (bundled in
    # avatarcast/face/models, Apache-2.0) on LiteRT, not through the mediapipe package: see README.
    "ai-edge-litert==2.3.0",
    "pocketsphinx==5.1.1",
    "praat-parselmouth==0.4.7",
    "vaderSentiment==3.3.2",
    "psutil==7.2.2",
    "matplotlib==3.11.2",
]

EXTRAS = {
    # independent face detector and descriptor for `avatarcast eval` (dlib's 68-point model and ResNet descriptor)
    "eval": ["dlib-bin==20.0.1.post1", "face-recognition-models==0.3.0"],
    # install torch==2.13.0 first (see README): a looser torch pulls a multi-GB CUDA build
    "gpu": ["torch==2.13.0", "triton==3.9.0", "diffusers==0.42.1", "transformers==5.24.0", "tokenizers==0.23.3",
            "xformers==0.0.35", "accelerate==1.15.0", "ftfy==6.3.1"],
    "ray": ["ray==2.60.0"],
    # the Pipecat video service (avatarcast.integrations.pipecat): docs/pipecat.md
    "pipecat": ["pipecat-ai==1.14.0"],
}
EXTRAS["dev"] = EXTRAS["eval"] + ["pytest==9.2.0", "pytest-asyncio==1.5.0", "playwright==1.65.2", "hypothesis==6.170.27"]

setup(
    name="avatarcast",
    version="0.1.0",
    description="Real-time livestreaming avatar engine: a portrait becomes a talking avatar driven by speech",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["avatarcast", "avatarcast.*", "avatarcast_bench", "avatarcast_bench.*"]),
    package_data={
        "avatarcast": ["assets/*", "assets/mouth_bank/*", "live/static/*", "live/static/studio/*"],
        "avatarcast.face": ["models/*"],
    },
    install_requires=CORE,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["avatarcast = avatarcast.cli.main:main"]},
)
