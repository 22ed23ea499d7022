"""
``DetpreError``: a mistake the user can fix (a bad path, a stale file, a typo'd key). Its message
names the file or key and says what to do; ``tools/train_net.py`` prints it as one line instead
of a traceback. A ``ValueError`` so callers that caught detpre's older ValueErrors still do.
"""

__all__ = ["DetpreError"]


class DetpreError(ValueError):
    pass
