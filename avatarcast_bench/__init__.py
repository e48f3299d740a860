"""Benchmarks and the evaluation detector, out of the product's import path: the live latency bench, the soak, the
aiortc receiver and Chromium helpers, the independent face detector (dlib) and its evaluation of rendered videos,
the pipecat benchmark, and the `avatarcast bench` and `avatarcast eval` verbs (commands/), which the CLI loads by
name. It imports the product; no module of `avatarcast` imports it."""
