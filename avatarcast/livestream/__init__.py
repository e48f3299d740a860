"""When and where to show it: sessions, ingest protocol, media clock, WebRTC/WHEP and RTMP outputs, client."""
