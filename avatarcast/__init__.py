"""avatarcast: a real-time livestreaming avatar engine.

A portrait becomes a talking, expressive avatar driven by speech. The package has three rooms:

- ``avatarcast.pipeline``: what to show (avatar preparation, audio analysis, the director, the blueprint,
  generators, the offline cascade, encoding, evaluation);
- ``avatarcast.live``: when and where to show it (sessions, the WebSocket ingest protocol, the media clock,
  WebRTC/WHEP and RTMP outputs, the viewer page, the Python client);
- ``avatarcast.kernels``: how fast the neural generator runs on a GPU.

Dependencies point one way: livestream -> pipeline -> kernels.
"""

__version__ = "0.1.0"
