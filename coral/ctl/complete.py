"""Shell completion, decided here for bash and zsh alike: the shells' small
scripts (etc/coralctl.bash, etc/_coralctl) run `coralctl __complete CWORD
WORD...` and offer the lines it prints. Commands and options come from the
parser itself, so they cannot drift from it; service names, function names,
agents and session ids are asked of the colony (or of the agent with
--local) with a short timeout, and a daemon that does not answer offers
nothing rather than an error."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

FILES = "__files__"  # the shell should complete file names
ASK_TIMEOUT = 2.0  # seconds: a Tab press must not hang
FILE_OPTIONS = {"--config", "--save", "--key", "--colony-key", "--dir"}
DURATION_HINTS = ["30s", "60s", "90s", "5m", "10m"]
DURATION_OPTIONS = {"--duration", "--timeout", "--since", "--slow", "--min-duration"}


@dataclass
class Position:
    """Where the word being completed stands: the parser of the command
    typed so far, its positionals, and the options given a value."""

    parser: argparse.ArgumentParser
    path: list[str] = field(default_factory=list)  # ["debug", "attach"]
    positionals: list[str] = field(default_factory=list)
    options: dict[str, str] = field(default_factory=dict)
    flags: set[str] = field(default_factory=set)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _option(parser: argparse.ArgumentParser, word: str) -> argparse.Action | None:
    return parser._option_string_actions.get(word.split("=", 1)[0])


def locate(parser: argparse.ArgumentParser, words: list[str]) -> Position:
    """Walk the words before the one being completed."""
    pos = Position(parser)
    i = 0
    while i < len(words):
        word = words[i]
        action = _option(pos.parser, word) if word.startswith("-") else None
        if action is not None:
            name = action.option_strings[-1] if action.option_strings else word
            if action.nargs == 0:
                pos.flags.add(name)
            elif "=" in word:
                pos.options[name] = word.split("=", 1)[1]
            elif i + 1 < len(words):
                pos.options[name] = words[i + 1]
                i += 1
        elif not word.startswith("-"):
            children = _subparsers(pos.parser)
            if word in children and not pos.positionals:
                pos.parser = children[word]
                pos.path.append(word)
            else:
                pos.positionals.append(word)
        i += 1
    return pos


Ask = Callable[[str, str], list[str]]  # (what, detail) -> names; what: services | functions | agents | sessions | saved


def candidates(parser: argparse.ArgumentParser, words: list[str], cword: int, ask: Ask) -> list[str]:
    """What may come at words[cword] (words[0] is `coralctl`)."""
    current = words[cword] if cword < len(words) else ""
    before = words[1:cword]
    pos = locate(parser, before)
    prev = before[-1] if before else ""
    prev_action = _option(pos.parser, prev) if prev.startswith("-") and "=" not in prev else None
    if prev_action is not None and prev_action.nargs != 0:
        return [c for c in _values_of(prev_action, pos, ask, current) if c == FILES or c.startswith(current)]
    if current.startswith("-"):
        names = sorted({s for a in pos.parser._actions for s in a.option_strings if s.startswith("--")})
        return [n for n in names if n.startswith(current)]
    children = _subparsers(pos.parser)
    if children:
        return [c for c in children if c.startswith(current)]
    command = "/".join(pos.path)
    if pos.positionals:
        return []
    if command in ("functions", "debug/attach"):
        found = ask("services", "")
    elif command in ("debug/events", "debug/detach", "debug/stacks", "debug/flamegraph"):
        found = ask("sessions", "")
    elif command == "debug/show":
        found = ask("saved", "")
    else:
        found = []
    return [c for c in dict.fromkeys(found) if c.startswith(current)]


def _values_of(action: argparse.Action, pos: Position, ask: Ask, current: str) -> list[str]:
    name = action.option_strings[-1]
    if action.choices:
        return [str(c) for c in action.choices]
    if name in FILE_OPTIONS:
        return [FILES]
    if name in DURATION_OPTIONS:
        return DURATION_HINTS
    if name == "--function" and pos.positionals:
        return ask("functions", pos.positionals[0] + "\0" + current)
    if name == "--agent":
        return ask("agents", "")
    if name == "--service":
        return ask("services", "")
    return []
