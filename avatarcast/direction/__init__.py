"""What to show and when: the storyboard schema, instruction parsing, the rule director (offline and live) and the
LLM director."""
