"""pipeline/storage.py on real small and read-only filesystems (tmpfs mounts, see the `small_disk` fixture)."""

from __future__ import annotations

import errno

import pytest

from pipeline.storage import WriteError, check_space, fsync_tree, write_failed


def test_read_only_directory_is_one_line_naming_it(small_disk):
    disk = small_disk(64, read_only=True)
    with pytest.raises(WriteError) as caught:
        check_space(disk, 1)
    assert str(caught.value) == f"{disk}: does not take a write (read-only?); write elsewhere"
    with pytest.raises(WriteError, match=rf"^{disk / 'out'}: cannot create it \(Read-only file system\)"):
        check_space(disk / "out", 1)


def test_too_little_room_names_the_free_and_the_needed_space(small_disk):
    disk = small_disk(256)
    check_space(disk / "fits", 100 * 1024)
    with pytest.raises(WriteError) as caught:
        check_space(disk / "big", 10 * 2**20)
    expected = f"{disk / 'big'}: 0.2 MiB free, about 10.0 MiB needed; free some space or write elsewhere"
    assert str(caught.value) == expected
    assert caught.value.errno == errno.ENOSPC


def test_a_write_that_fills_the_disk_is_explained_and_other_failures_are_not(small_disk):
    disk = small_disk(128)
    with pytest.raises(OSError) as full:
        (disk / "big.bin").write_bytes(b"\0" * 2**20)
    failure = write_failed(disk / "big.bin", full.value, needed=2**20)
    assert str(failure).startswith(f"{disk / 'big.bin'}: cannot write (No space left on device); 0.0 MiB free there")
    assert str(failure).endswith("about 1.0 MiB needed")
    (disk / "big.bin").unlink()
    assert write_failed(disk / "x", ValueError("a bug, not the disk")) is None


def test_fsync_tree_flushes_files_and_directories(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    fsync_tree(tmp_path / "a")  # raises if any file or directory cannot be opened and flushed
    fsync_tree(tmp_path / "a" / "b" / "f")
