"""What one group commit writes to SQLite's write-ahead log: frames (pages) per one-completion batch, and
which table or index each page belongs to. Every frame is written (two pwrite calls), checksummed, and
later fsynced and copied back by a checkpoint, so pages per commit is what the writer's I/O and the
checkpoints' cost scale with.

The completion is bench/index_cost.py's (the overhead benchmark's request and the fake upstream's answer),
with the search index left to the writer's later steps as `stillroom serve` does.

    .venv/bin/python -m bench.wal_pages [--commits 200]
"""

from __future__ import annotations

import argparse
import collections
import sqlite3
import struct
import tempfile
from pathlib import Path

import orjson

from bench.index_cost import _record
from stillroom.store.db import make_engine
from stillroom.store.group_commit import save_completions
from stillroom.store.migrate import upgrade_database
from tests.fake_upstream import _completion

_WAL_HEADER = 32
_FRAME_HEADER = 24


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stillroom-wal-pages-") as tmp:
        path = Path(tmp) / "w.db"
        engine = make_engine(f"sqlite:///{path}")
        upgrade_database(engine)
        connection = engine.raw_connection()
        response = orjson.loads(_completion("fake"))
        documents: dict[int, str] = {}
        for _ in range(300):  # past the first pages of every table and index
            save_completions(engine, [_record(response)], connection, documents=documents)
        connection.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        for _ in range(args.commits):
            save_completions(engine, [_record(response)], connection, documents=documents)
        wal = Path(f"{path}-wal").read_bytes()
        page_size = struct.unpack(">I", wal[8:12])[0]
        frames = (len(wal) - _WAL_HEADER) // (page_size + _FRAME_HEADER)
        pages: collections.Counter[int] = collections.Counter()
        for n in range(frames):
            offset = _WAL_HEADER + n * (page_size + _FRAME_HEADER)
            pages[struct.unpack(">I", wal[offset : offset + 4])[0]] += 1
        connection.close()
        engine.dispose()
        reader = sqlite3.connect(path)
        owner = dict(reader.execute("SELECT pageno, name FROM dbstat"))
        reader.close()
    by_name: collections.Counter[str] = collections.Counter()
    for page, count in pages.items():
        by_name[owner.get(page, "?")] += count
    print(
        f"page size {page_size}; {frames / args.commits:.1f} frames "
        f"({frames * (page_size + _FRAME_HEADER) / args.commits / 1024:.0f} KiB) per one-completion commit"
    )
    for name, count in by_name.most_common():
        print(f"{count / args.commits:6.2f}  {name}")


if __name__ == "__main__":
    main()
