"""The one exception type users see."""


class ReviewflowError(Exception):
    """A problem the user can fix. The message names the input (file, column, setting) and what to do."""
