"""The one exception type for bad input: it says what is wrong and how to fix it."""


class InputError(ValueError):
    """Raised before long work starts when a param, file, id or dimension is wrong.

    The message names the offending key, file or id and says what to do about it.
    """
