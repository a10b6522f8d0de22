"""The one base class of bad input.

An error the person running the pipeline can fix (a setting, a file, a damaged or missing output
of an earlier stage) derives from `BadInput`: the CLI prints its message, which names the file,
setting or layer and says what to do, and exits with status 2, without a traceback.
"""


class BadInput(Exception):
    """Input the user can fix; the message says which and how. The CLI exits 2 on it, with no traceback."""
