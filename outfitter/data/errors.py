"""The one exception of the data layer: a dataset that cannot be used, with a message to act on."""

from __future__ import annotations


class DatasetError(Exception):
    """A dataset file is missing, unreadable or inconsistent.

    The message always names the file (and the line where there is one) and says what to do, so
    the CLI can print it as is instead of a traceback from deep inside `json` or PIL.
    """
