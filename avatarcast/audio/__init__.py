"""Speech in: loading and resampling (io, imports nothing above core), voice activity, mouth features (visemes),
forced alignment of transcripts and prosody."""
