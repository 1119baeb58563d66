"""The scratch directory of one benchmark run."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A new temporary directory for a run's SQLite database, Redis data and process logs.

    Removed when the run ends normally (a SQLite run leaves 5 to 130 MB there, a DLQ of a
    million entries gigabytes); kept, and named on stderr, when the run fails, for its logs.
    `OBSERVATORY_BENCH_KEEP=1` keeps it in any case.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    except BaseException:
        print(f"the run's files (logs, database) are kept in {path}", file=sys.stderr)
        raise
    if os.environ.get("OBSERVATORY_BENCH_KEEP") == "1":
        print(f"the run's files are kept in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)
