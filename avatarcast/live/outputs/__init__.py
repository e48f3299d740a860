"""Where a live session's frames and audio go: the WebRTC tracks, WHEP viewers (with trickle ICE), WHIP publishing,
RTMP, the shared encoders and the fanout that feeds them all from one encode."""
