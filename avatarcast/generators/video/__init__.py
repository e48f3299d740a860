"""The video generator: a recorded speaker (a video avatar) driven by head motion."""
