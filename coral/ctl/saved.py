"""Sessions saved by coralctl: where they live, how they are written, and
`coralctl debug show`, which reads one back with no daemon involved."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from coral.ctl import render
from coral.proto import coral_pb2 as pb

EXIT_OK, EXIT_FAILED = 0, 1


def sessions_dir() -> Path:
    """Where attach keeps the sessions it saves: $XDG_STATE_HOME/coral/sessions."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "coral" / "sessions"


class SessionFile:
    """A session saved as the JSON Lines that `--output json` prints: the
    session as it started (attach only), its calls, then the session as it
    ended and the summary. Readable by its owner only: it holds captured
    values."""

    def __init__(self, path: Path) -> None:
        self.path = path
        for parent in reversed(path.parents):
            if not parent.exists():
                parent.mkdir(mode=0o700)
        self._f = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w")

    def record(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, separators=(",", ":")) + "\n")

    def call(self, call: pb.Call) -> None:
        self.record({"kind": "call", **render.to_dict(call)})

    def close(self) -> None:
        self._f.close()


def show_saved(args: argparse.Namespace) -> int:
    """`coralctl debug show`: a saved session, read from its file."""
    out, style = render.Output(args.output == "json"), render.Style.for_stream(sys.stdout)
    given = Path(args.session)
    path = given if given.is_file() else sessions_dir() / f"{args.session}.jsonl"
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        saved = sorted(p.stem for p in sessions_dir().glob("*.jsonl")) if sessions_dir().is_dir() else []
        near = f" (saved there: {', '.join(saved[-5:])})" if saved else ""
        print(f"coralctl: no saved session {args.session!r} in {sessions_dir()}{near}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"coralctl: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    try:
        records = [json.loads(line) for line in lines if line.strip()]
    except ValueError:
        print(f"coralctl: {path} is not a saved session (JSON Lines from coralctl debug attach)", file=sys.stderr)
        return EXIT_FAILED
    if out.json:
        for r in records:
            out.record(r)
        return EXIT_OK
    slow_ns = round(args.slow * 1e9)
    tally, final = render.Tally(), None
    durations: list[int] = []
    for r in records:
        if r.get("kind") == "call":
            call = render.call_from_dict(r)
            tally.add(call, slow_ns)
            durations.append(call.duration_ns)
            for line in render.format_call(call, slow_ns, style):
                out.line(line)
        elif r.get("kind") == "session":
            final = render.session_from_dict(r)
    if final is None or not any(r.get("kind") == "summary" for r in records):
        out.line(f"(incomplete: {path} ends before its session did)")
    if final is not None:
        out.line(f"Session {final.session_id} {final.status}. {len(durations)} calls saved.")
        for line in render.format_summary(render.summarize_session(final, durations), final, tally, slow_ns, style):
            out.line(line)
    return EXIT_OK
