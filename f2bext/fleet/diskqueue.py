"""The fleet publisher's disk queue: events Redis has not acknowledged yet, kept across outages,
stops, crashes and reboots (JSON lines, oldest first, bounded)."""

from __future__ import annotations

import json
import os
import tempfile
import threading

QUEUE_LIMIT = 10_000  # events kept while Redis is unreachable; the oldest go first


class DiskQueue:
    """Appended to before each send, cut only after Redis acknowledged: a stop, a crash or a reboot
    costs no event (one may be sent twice, which is harmless). A line that does not read back as a
    JSON object (a torn write) costs that line only."""

    def __init__(self, path: str, limit: int = QUEUE_LIMIT) -> None:
        self.path, self.limit = path, limit
        self._lock = threading.Lock()
        self._cut = 0  # lines removed from the file's head by this object: positions outlive a cut
        self._acked = 0  # lines at the file's head Redis has, not yet cut (the cut failed)
        try:
            self._count = len(self._lines())
        except OSError:
            self._count = 0

    def __len__(self) -> int:
        """Lines not yet acknowledged (unreadable ones included, until they are cut)."""
        with self._lock:
            return self._count - self._acked

    def append(self, items: list[dict[str, str]]) -> int:
        """Add items durably (fsync), or raise OSError having added none; returns how many of the
        oldest were dropped to stay within the limit."""
        if not items:
            return 0
        data = "".join(json.dumps(i) + "\n" for i in items).encode()
        with self._lock:
            os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a torn last line stays one bad line, not two
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # all or nothing: the caller keeps these and tries again
                    raise
            finally:
                os.close(fd)
            self._count += len(items)
            excess = self._count - self.limit
            if excess <= 0:
                return 0
            try:
                self._cut_head(self._lines(), excess)
            except OSError:
                return 0  # the items are in; the next append or acknowledgement cuts the excess
            return excess

    def head(self, n: int) -> tuple[int, int, list[dict[str, str]]]:
        """The oldest n unacknowledged lines: (position of the first, lines read, those that are JSON
        objects of strings). Unreadable lines count as read, so acknowledging drops them too."""
        with self._lock:
            every = self._lines()
            self._count = len(every)  # the truth, should anyone have emptied the file meanwhile
            self._acked = min(self._acked, self._count)
            lines = every[self._acked:self._acked + n]
            start = self._cut + self._acked
        items = []
        for line in lines:
            try:
                item = json.loads(line)
            except (ValueError, RecursionError):  # a torn line, bytes that are not UTF-8, absurd nesting
                continue
            if isinstance(item, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in item.items()):
                items.append(item)
        return start, len(lines), items

    def ack(self, start: int, count: int) -> None:
        """Redis has lines [start, start + count): cut them (or what the limit left of them)."""
        with self._lock:
            self._acked = max(self._acked, min(start + count - self._cut, self._count))
            if self._acked > 0:
                self._cut_head(self._lines(), self._acked)

    def _lines(self) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                return [line for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def _cut_head(self, lines: list[bytes], drop: int) -> None:
        """Keep lines[drop:] (atomically: a temporary file, fsync, rename; a plain truncation when
        nothing is left, which needs no free space)."""
        kept = lines[drop:]
        if kept:
            fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".tmp-queue-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.writelines(kept)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except OSError:
                os.unlink(tmp)
                raise
        elif os.path.exists(self.path):
            os.truncate(self.path, 0)
        self._cut += drop
        self._acked = max(self._acked - drop, 0)
        self._count = len(kept)
