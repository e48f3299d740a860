"""Generators turn a clip spec (first and last keyframe, mouth track) into frames. factory.py picks one from the
settings: parametric/ (a warped portrait: rig, warp, eye gaze, mouth interior and mouth bank, framing), video/ (a
recorded speaker driven by head motion) and neural.py (torch, GPU; an optional extra)."""
