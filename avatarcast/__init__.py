"""avatarcast: a real-time livestreaming avatar engine.

A portrait becomes a talking, expressive avatar driven by speech. One folder per room:

- ``core``: the types rooms exchange, the library's errors, easing and keyframe interpolation;
- ``audio``: loading and resampling, voice activity, mouth features, alignment, prosody;
- ``face``: face detection and mesh (bundled models), avatar preparation and loading;
- ``direction``: the storyboard schema, instruction parsing, the rule director and the LLM director;
- ``blueprint`` (one module): keyframe placement and clip specs;
- ``generators``: the factory, the parametric, video and neural generators;
- ``offline``: the cascade, its executors, the clip cache, encoding;
- ``live``: ingest, scheduler, media clock, render workers, sessions, server, REST, studio; ``live.outputs``: WebRTC
  tracks, WHEP, WHIP, RTMP, encoders, fanout;
- ``kernels``: attention kernels for the neural generator on a GPU;
- ``cli``: the ``avatarcast`` command; ``integrations``: Pipecat.

Benchmarks and the evaluation detector live beside this package, in ``avatarcast_bench``, which no module here
imports (``tests/test_layout.py``).
"""

__version__ = "0.1.0"
