"""Live sessions: speech in over the ingest socket, frames and audio out on the media clock.

protocol.py and ingest.py (the WebSocket protocol and its socket), session.py (one avatar's session), scheduler.py
(the rolling plan, clips ahead of playback), mediaclock.py (the clock every output follows), renderer.py (render
workers, in a thread or a child process), outputs/ (tracks, WHEP, WHIP, RTMP, encoders, fanout), server.py and
rest.py (HTTP and the REST API), security.py, cors.py, connections.py, load.py, logs.py, stats.py, runtime.py,
studio.py (+ static/), tts.py, demo.py and client.py (the Python ingest client).
"""
