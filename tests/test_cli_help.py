"""Every coralctl command's --help ends with examples, and every example is
a command line coralctl accepts (parsed by coralctl itself, so an example
cannot name an option that does not exist)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
from collections.abc import Iterator

import pytest

from coral.ctl.main import build_parser
from tests.harness import tool

COMMANDS = [
    [],
    ["ping"],
    ["services"],
    ["functions"],
    ["debug"],
    ["debug", "attach"],
    ["debug", "sessions"],
    ["debug", "events"],
    ["debug", "show"],
    ["debug", "detach"],
    ["audit"],
]


def examples(help_text: str) -> list[str]:
    tail = help_text.split("\nexamples:\n", 1)[1]
    lines = []
    for line in tail.splitlines():
        if not line.startswith("  coralctl "):
            break
        lines.append(line.strip())
    return lines


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "coralctl")
def test_help_has_examples_that_coralctl_accepts(command: list[str]) -> None:
    out = subprocess.run([tool("coralctl"), *command, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "\nexamples:\n" in out.stdout, out.stdout
    found = examples(out.stdout)
    assert found, out.stdout
    for example in found:
        argv = shlex.split(example.split(" | ")[0].split("  #")[0].split(" > ")[0])[1:]
        args = build_parser().parse_args(argv)  # exits 2 (and fails the test) on a bad example
        named = [args.command] + ([args.debug_command] if args.command == "debug" else [])
        assert named[: len(command)] == command, (example, named)


def parsers(parser: argparse.ArgumentParser, path: str = "coralctl") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from parsers(child, f"{path} {name}")


def test_every_option_and_argument_has_help_text() -> None:
    missing = [f"{path} {action.option_strings[0] if action.option_strings else action.dest}"
               for path, parser in parsers(build_parser()) for action in parser._actions
               if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) and not action.help]
    assert missing == []
