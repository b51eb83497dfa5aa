"""The agent's one start-up failure: what this host lacks, said in one line."""


class StartupError(Exception):
    """Cannot run in this environment; the message says what to change (exit status 2)."""
