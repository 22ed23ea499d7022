import json
import os

import pytest

from detpre.utils.io import atomic_open, write_json_atomic


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.json"
    write_json_atomic(str(path), {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w") as f:
            f.write("{partial")
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"a": 1}
    assert os.listdir(tmp_path) == ["out.json"]


def test_creates_missing_folder(tmp_path):
    path = tmp_path / "a" / "b" / "x.bin"
    with atomic_open(str(path)) as f:
        f.write(b"xyz")
    assert path.read_bytes() == b"xyz"


def test_written_files_get_umask_permissions_not_0600(tmp_path):
    path = tmp_path / "shared.pkl"
    with atomic_open(str(path)) as f:
        f.write(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
