"""``files_sha256`` remembers a hash for the life of the process, keyed by each file's stat and a few sampled
blocks: a second call on unchanged files reads only those blocks, and any rewrite (even one that keeps the size
and restores the mtime) is read again.
"""

import hashlib
import os
import time
import types

from prefpool.pipeline.model.cache_key import files_sha256


def _expected(paths, then=b""):
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode("utf-8") + b"\0" + path.read_bytes())
    digest.update(then)
    return digest.hexdigest()


def test_a_second_hash_of_unchanged_files_reads_only_samples(tmp_path, monkeypatch):
    import prefpool.pipeline.model.cache_key as cache_key

    files = [tmp_path / "config.json", tmp_path / "model.safetensors"]
    files[0].write_text("{}")
    files[1].write_bytes(os.urandom(3 << 20))
    first = files_sha256(files, then=b"tail")
    assert first == _expected(files, b"tail")
    hashed = []

    class Counting:
        def __init__(self):
            self.inner = hashlib.sha256()

        def update(self, data):
            hashed.append(len(data))
            self.inner.update(data)

        def digest(self):
            return self.inner.digest()

        def hexdigest(self):
            return self.inner.hexdigest()

    monkeypatch.setattr(cache_key, "hashlib", types.SimpleNamespace(sha256=Counting))
    assert files_sha256(files, then=b"tail") == first
    assert 0 < sum(hashed) <= 2 * cache_key.SAMPLED_BLOCKS * cache_key.BLOCK  # the key's samples, not 3 MiB
    hashed.clear()
    assert files_sha256(files) == _expected(files)  # another tail is another hash: the files are read
    assert sum(hashed) > 3 << 20


def test_a_rewrite_that_keeps_size_and_mtime_is_hashed_again(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 4096)
    before = files_sha256([path])
    stat = path.stat()
    time.sleep(0.05)  # file times tick in a few milliseconds: the rewrite's change time differs
    with open(path, "r+b") as handle:  # same inode, same size
        handle.write(b"b")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the old modification time back
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_ino == stat.st_ino
    after = files_sha256([path])
    assert after != before and after == _expected([path])


def test_a_file_moved_under_another_name_is_hashed_under_that_name(tmp_path):
    path = tmp_path / "a.safetensors"
    path.write_bytes(b"x" * 100)
    before = files_sha256([path])
    moved = path.rename(tmp_path / "b.safetensors")
    assert files_sha256([moved]) == _expected([moved]) != before
