"""Generators turn a ClipSpec (two keyframes and an audio slice) into video frames."""
