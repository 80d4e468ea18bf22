"""Content fingerprints of the files a run reads, so that a run's key changes when its data does.

A file's digest is the sha256 of its bytes. Digests are cached by (absolute path, size, mtime, ctime)
in ``<cache dir>/file-digests.sqlite`` ($PRISM_LAB_CACHE_DIR, else $XDG_CACHE_HOME/prism-lab, else
~/.cache/prism-lab), so planning a grid over a large dataset hashes each file once; ctime cannot be set
back by a user, so a rewritten file is always hashed again. If the cache cannot be opened or written,
every file is hashed (never an error).
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from prism_lab.eval.predictions import file_sha256


def cache_path() -> Path:
    base = os.environ.get("PRISM_LAB_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prism-lab")
    return Path(base) / "file-digests.sqlite"


class _DigestCache:
    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        try:
            path = cache_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, stamp TEXT NOT NULL, "
                              "sha256 TEXT NOT NULL)")
            self.conn.execute("CREATE TABLE IF NOT EXISTS marks (tag TEXT PRIMARY KEY)")
        except (OSError, sqlite3.Error):
            self.conn = None

    def get(self, path: str, stamp: str) -> str | None:
        if self.conn is None:
            return None
        try:
            row = self.conn.execute("SELECT stamp, sha256 FROM digests WHERE path=?", (path,)).fetchone()
        except sqlite3.Error:
            return None
        return row[1] if row is not None and row[0] == stamp else None

    def put(self, path: str, stamp: str, sha: str) -> None:
        if self.conn is None:
            return
        try:
            self.conn.execute("INSERT OR REPLACE INTO digests(path, stamp, sha256) VALUES (?,?,?)", (path, stamp, sha))
        except sqlite3.Error:
            pass

    def has_mark(self, tag: str) -> bool:
        try:
            return self.conn is not None and self.conn.execute("SELECT 1 FROM marks WHERE tag=?", (tag,)).fetchone() is not None
        except sqlite3.Error:
            return False

    def mark(self, tag: str) -> None:
        if self.conn is not None:
            try:
                self.conn.execute("INSERT OR IGNORE INTO marks(tag) VALUES (?)", (tag,))
            except sqlite3.Error:
                pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def fingerprint_paths(paths: Iterable[str | Path]) -> str:
    """sha256 over each path's name and content digest (a directory: every file below it, sorted by
    relative path; a missing path: a marker), in the order given."""
    digest = hashlib.sha256(b"prism-lab data v2\0")
    cache = _DigestCache()
    try:
        for ref in paths:
            p = Path(ref)
            digest.update(f"{p}\0".encode())
            if p.is_dir():
                files = sorted((x for x in p.rglob("*") if x.is_file()), key=lambda x: x.relative_to(p).as_posix())
            else:
                files = [p]
            for f in files:
                digest.update(f"{f.relative_to(p).as_posix() if f != p else ''}\0".encode())
                try:
                    st = f.stat()
                except OSError:
                    digest.update(b"<missing>\0")
                    continue
                stamp = f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"
                key = str(f.resolve())
                sha = cache.get(key, stamp)
                if sha is None:
                    sha = file_sha256(f)
                    cache.put(key, stamp, sha)
                digest.update(f"{sha}\0".encode())
    finally:
        cache.close()
    return digest.hexdigest()


def already_checked(tag: str) -> bool:
    """Whether :func:`mark_checked` recorded ``tag`` (e.g. "these exact file contents passed validation")."""
    cache = _DigestCache()
    try:
        return cache.has_mark(tag)
    finally:
        cache.close()


def mark_checked(tag: str) -> None:
    cache = _DigestCache()
    try:
        cache.mark(tag)
    finally:
        cache.close()
