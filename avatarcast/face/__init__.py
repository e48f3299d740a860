"""Faces: detection and the 478-point face mesh on the bundled MediaPipe models (models/), and avatar preparation
(portraits in avatar.py, recorded footage in video_avatar.py)."""
