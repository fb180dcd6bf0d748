"""`datasets` cache keys that follow the code: a map's cached result is reused only while the code that made it is
unchanged.

`datasets.Dataset.map` (and `filter`) caches its result on disk under a fingerprint of its input and of its function,
which it hashes by pickling: a function by its module and name, an object by its class name and attributes — never
by its code. So an edited parser or preparer (a changed checkout, a new version of this package) would reuse rows
cached by the old one. `Versioned` wraps a map function together with `code_version()`, a digest of the data code's
source text, which the fingerprint then includes: any edit of that code makes a new cache entry.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

DATA_CODE = Path(__file__).parent  # dpo_lightning/data: every module that reads, parses or prepares rows


@functools.cache
def code_version() -> str:
    """A digest of the source text of every module under `DATA_CODE` (and of their paths)."""
    digest = hashlib.blake2b(digest_size=16)
    for path in sorted(DATA_CODE.rglob("*.py")):
        digest.update(path.relative_to(DATA_CODE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class Versioned:
    """A `datasets` map or filter function: calls `function`, and carries `code_version()` into the fingerprint that
    `datasets` takes of it (module docstring)."""

    def __init__(self, function: Callable[..., Any]) -> None:
        self.function = function
        self.code_version = code_version()  # not read here: `datasets` hashes it with the function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(*args, **kwargs)
