"""The colony's audit journal: what makes an audit row durable before the
reply it describes, for one append and one fdatasync (about 0.3 ms here)
instead of a DuckDB transaction (7.6 ms of CPU for an attach's audit row
and session, measured in docs/benchmarks.md). colony.duckdb gets the same
rows behind, in larger transactions that no reply waits for.

The journal also keeps each session the colony creates until colony.duckdb
holds it, with its parts' cursors at 0: replayed, such a session is pulled
again from the start, and the calls table keeps each call once.

Files `audit.journal.N` beside colony.duckdb, oldest first. A record is a
4-byte little-endian length and a JournalEntry (coral/proto). A file is
deleted once colony.duckdb holds every entry in it; a new file is started
past MAX_FILE_BYTES. At start-up, what the files hold and colony.duckdb
does not is written there (ColonyStore), and the files go. A record cut
short by a crash ends its file's reading: its reply was never sent."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

from coral.colonyd.writer import Writer
from coral.proto import coral_pb2 as pb

log = logging.getLogger(__name__)

PREFIX = "audit.journal."
MAX_FILE_BYTES = 1 << 20
MAX_RECORD_BYTES = 1 << 24  # a longer length is a torn or foreign file
_LENGTH = struct.Struct("<I")
_write = os.write  # the journal's own writes (a test cuts them short)


def journal_files(directory: Path) -> list[Path]:
    """The journal's files, oldest first."""
    found = [p for p in directory.glob(PREFIX + "*") if p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def read_entries(directory: Path) -> Iterator[pb.JournalEntry]:
    """Every whole entry in the journal's files, in order."""
    for path in journal_files(directory):
        data = path.read_bytes()
        at = 0
        while at + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, at)
            if length > MAX_RECORD_BYTES or at + _LENGTH.size + length > len(data):
                log.warning("%s: a record cut short at byte %d (a crash while writing it); the rest is ignored", path, at)
                break
            entry = pb.JournalEntry()
            try:
                entry.ParseFromString(data[at + _LENGTH.size: at + _LENGTH.size + length])
            except Exception:  # DecodeError: a torn record
                log.warning("%s: an unreadable record at byte %d; the rest is ignored", path, at)
                break
            yield entry
            at += _LENGTH.size + length


def remove_files(directory: Path) -> None:
    for path in journal_files(directory):
        path.unlink(missing_ok=True)
    _sync_dir(directory)


def _sync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Journal:
    """Appends on a thread of its own (a database write never delays one).
    Entries are numbered by the store; `covered(n)` says colony.duckdb holds
    every entry up to n, so files holding only those may go."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._writer = Writer("colony-journal")
        self._pending: list[tuple[int, bytes]] = []  # (entry number, record) not handed to the thread yet
        self._busy = False
        self.submitted = 0  # appends handed to the thread
        self.written = 0  # of those, finished (written, or failed: counted)
        self.failures = 0
        self._covered = 0  # colony.duckdb holds every entry up to this number
        self._handed = 0  # the last entry handed to the thread
        # Touched by the thread only: the open file, its number and size, and each file's last entry.
        self._file: int | None = None
        self._file_no = 0
        self._file_size = 0
        self._last_in: dict[int, int] = {}

    def fileno(self) -> int:
        """Readable when an append has finished (call ``on_written``)."""
        return self._writer.fileno()

    def add(self, number: int, entry: pb.JournalEntry) -> None:
        record = entry.SerializeToString()
        self._pending.append((number, _LENGTH.pack(len(record)) + record))

    @property
    def pending_entries(self) -> int:
        """Entries not handed to the thread yet."""
        return len(self._pending)

    def batch_of_pending(self) -> int:
        """The append that will hold what is pending now: a reply waiting for
        its audit row goes out once ``written`` reaches it."""
        return self.submitted + (1 if self._pending else 0)

    def covered(self, number: int) -> None:
        """colony.duckdb holds every entry up to `number`: once nothing else
        is pending, the files holding only those go (an idle colony keeps no
        journal that could bring back a session retention purged since)."""
        self._covered = max(self._covered, number)
        if not self._busy and not self._pending and self._covered >= self._handed:
            covered = self._covered
            self._busy = True
            self.submitted += 1
            self._writer.submit(lambda: self._prune(covered, everything=True))

    def behind(self) -> bool:
        """Hand what is pending to the thread, if it is idle; True if it was."""
        if self._busy or not self._pending:
            return False
        records, self._pending = self._pending, []
        self._handed = records[-1][0]
        covered = self._covered
        self._busy = True
        self.submitted += 1
        self._writer.submit(lambda: self._append(records, covered))
        return True

    def on_written(self, wait: bool = False) -> int:
        for error in self._writer.finished(wait):
            self._busy = False
            self.written += 1
            if error is not None:
                self.failures += 1
                log.error("cannot append to the audit journal in %s: %s; the rows stay held for colony.duckdb",
                          self.directory, error)
        return self.written

    def drain(self) -> None:
        """Every pending entry appended (at shutdown)."""
        while self._busy or self._pending:
            if not self.behind():
                self.on_written(wait=True)

    def close(self, everything_stored: bool) -> None:
        """Stop the thread; with `everything_stored` (colony.duckdb holds
        every entry), the files go."""
        self._writer.close()
        self._close_file()
        if everything_stored:
            remove_files(self.directory)

    # The thread's side.

    def _prune(self, covered: int, everything: bool = False) -> None:
        """Delete the files colony.duckdb holds all of: the open one too when
        `everything` (nothing is pending: the next append starts a new file)."""
        for no, last in list(self._last_in.items()):
            if last <= covered and (everything or no != self._file_no):
                if no == self._file_no:
                    self._close_file()
                (self.directory / f"{PREFIX}{no}").unlink(missing_ok=True)
                del self._last_in[no]

    def _append(self, records: list[tuple[int, bytes]], covered: int) -> None:
        self._prune(covered)
        if self._file is None or self._file_size >= MAX_FILE_BYTES:
            self._open_next()
        assert self._file is not None
        data = b"".join(record for _, record in records)
        self._last_in[self._file_no] = records[-1][0]  # even if cut short below: the file goes when these are stored
        try:
            view = memoryview(data)
            while view:
                n = _write(self._file, view)
                view = view[n:]
            os.fdatasync(self._file)
        except OSError:
            # Cut short (a full disk): nothing may follow the torn record in
            # this file, or reading would stop before it; the next append
            # starts a new file.
            self._close_file()
            raise
        self._file_size += len(data)

    def _close_file(self) -> None:
        if self._file is not None:
            fd, self._file = self._file, None
            os.close(fd)

    def _open_next(self) -> None:
        self._close_file()
        existing = journal_files(self.directory)
        number = max([int(p.name[len(PREFIX):]) for p in existing] + [self._file_no]) + 1
        fd = os.open(self.directory / f"{PREFIX}{number}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file, self._file_no, self._file_size = fd, number, 0
        _sync_dir(self.directory)  # the new file's name is durable too
