"""The implementations of `avatarcast bench ...` and `avatarcast eval`."""
