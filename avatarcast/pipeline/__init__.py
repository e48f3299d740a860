"""What to show: avatar preparation, audio analysis, the director, blueprint, generators, cascade, encoding."""
