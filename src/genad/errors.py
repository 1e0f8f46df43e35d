"""User-facing errors: the CLI and service print the message in one line, never a traceback."""


class GenadError(Exception):
    """A mistake the user can fix (bad path, bad option, bad file). The message says what to do."""


class ConfigError(GenadError):
    """Missing or wrong configuration (API key, base URL, model name)."""
