"""avatarcast inside other frameworks' pipelines, each behind an optional extra.

- ``avatarcast.integrations.pipecat``: a Pipecat video service (``pip install 'avatarcast[pipecat]'``).
"""
