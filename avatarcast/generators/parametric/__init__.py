"""The parametric generator: a portrait warped by a face rig, with eye gaze, a mouth interior drawn from the mouth
bank, and framing."""
