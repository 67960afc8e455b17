"""The one exception type users see: a bad file, key or value, printed by the CLI as a single line."""


class MVFormerError(Exception):
    """A problem with the user's input (config, files, data), not a bug: message names the culprit."""
