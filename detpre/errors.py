"""
``DetpreError``: a mistake the user can fix (a bad path, a stale file, a typo'd key). Its message
names the file or key and says what to do; ``tools/train_net.py``, ``generate_proposals.py`` and
``generate_pseudo_labels.py`` print it as one line ``detpre: error: ...`` instead of a traceback.
A ``ValueError`` so callers that caught detpre's older ValueErrors still do.
"""
import contextlib
import errno

__all__ = ["DetpreError", "DetpreFileNotFoundError", "writing"]


class DetpreError(ValueError):
    pass


class DetpreFileNotFoundError(DetpreError, FileNotFoundError):
    """A path the user gave does not exist; still a ``FileNotFoundError`` for callers catching that."""


_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


@contextlib.contextmanager
def writing(output, what="output"):
    """Turn a full disk or an unwritable folder met while writing ``output`` into a
    ``DetpreError`` naming the file and what to do (instead of an OSError traceback)."""
    try:
        yield
    except OSError as e:
        if e.errno not in _NO_SPACE + _NOT_WRITABLE:
            raise
        where = e.filename or output
        if e.errno in _NO_SPACE:
            todo = ("free space there and rerun the same command (finished parts are kept), "
                    "or write it to another disk")
        else:
            todo = "fix the folder's permissions or write it elsewhere"
        raise DetpreError(f"cannot write the {what} {output}: {where}: {e.strerror}; {todo}") from e
