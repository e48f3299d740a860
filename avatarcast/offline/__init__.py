"""Recorded speech to a video file: the cascade (direction, blueprint, clips, generators), its executors (threads,
processes, Ray), the clip cache and encoding/muxing."""
