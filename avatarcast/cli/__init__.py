"""The `avatarcast` command line: main.py parses the verb and prints library errors as one line, naming settings as
this command's flags; commands/ holds one module per verb (bench and eval load avatarcast_bench by name)."""
