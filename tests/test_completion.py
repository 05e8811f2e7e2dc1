"""Shell completion in bash and zsh: commands and options from coralctl's
own parser, and the names an operator types most (services, functions,
sessions) asked of a real colony. The shells run the shipped scripts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from coral.ctl import complete
from coral.ctl.main import build_parser
from tests.harness import REPO, CoralEnv, NativeService, Process, start_attach, tool
from tests.test_native_e2e import wait_for_service

BASH = REPO / "etc" / "coralctl.bash"
ZSH = REPO / "etc" / "_coralctl"


def shell_env(env: CoralEnv | None) -> dict[str, str]:
    base = dict(env.env) if env is not None else dict(os.environ)
    base["PATH"] = f"{Path(tool('coralctl')).parent}:{base.get('PATH', '')}"  # the shells run `coralctl`
    return base


def quote(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def bash(env: CoralEnv | None, *words: str) -> list[str]:
    """The shipped function, run by a real bash given what bash gives it: the
    line up to the cursor, and the words as bash splits them (at
    COMP_WORDBREAKS' characters as well, so `ns::work` is three words)."""
    line = " ".join(words)
    split = [part for w in words for part in re.split(r"(:+)", w) if part] or [""]
    if words[-1] == "":
        split.append("")
    script = (f"source {BASH}; COMP_LINE={quote(line)}; COMP_POINT={len(line)}; "
              f"COMP_WORDS=({' '.join(map(quote, split))}); COMP_CWORD={len(split) - 1}; _coralctl; "
              "printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=shell_env(env),
                         timeout=30)
    return [line for line in out.stdout.splitlines() if line]


def zsh(env: CoralEnv | None, *words: str) -> list[str]:
    """The shipped zsh function, run by a real zsh with the words it would
    be given; compadd and _files stand in for the completion system's."""
    zsh_path = shutil.which("zsh")
    if zsh_path is None:
        pytest.fail("zsh is not installed: ./scripts/setup.sh installs it (the completion test needs it)")
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    script = ("compadd() { shift; [[ $1 == -- ]] && shift; printf '%s\\n' \"$@\"; }; _files() { echo FILES; }; "
              f"words=({quoted}); CURRENT={len(words)}; source {ZSH}")
    out = subprocess.run([zsh_path, "-f", "-c", script], capture_output=True, text=True, check=True,
                         env=shell_env(env), timeout=30)
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.parametrize("shell", [bash, zsh], ids=["bash", "zsh"])
def test_commands_and_options_come_from_the_parser(shell) -> None:  # type: ignore[no-untyped-def]
    assert shell(None, "coralctl", "de") == ["debug"]
    assert shell(None, "coralctl", "debug", "") == ["attach", "sessions", "events", "show", "stacks", "flamegraph",
                                                   "detach"]
    assert "--print" in shell(None, "coralctl", "debug", "attach", "payments", "--pr")
    assert "--capture-args" in shell(None, "coralctl", "debug", "attach", "payments", "--cap")
    assert shell(None, "coralctl", "--output", "") == ["text", "json", "folded"]
    assert shell(None, "coralctl", "keys", "") == ["generate"]
    assert "--dir" in shell(None, "coralctl", "keys", "generate", "alice", "--d")
    assert "--colony-key" in shell(None, "coralctl", "services", "--col")


def test_bash_offers_files_where_an_option_takes_one(tmp_path: Path) -> None:
    (tmp_path / "coral-test.toml").write_text("")
    assert bash(None, "coralctl", "--config", str(tmp_path / "coral-te")) == [str(tmp_path / "coral-test.toml")]
    assert zsh(None, "coralctl", "--config", "x") == ["FILES"]


@pytest.mark.parametrize("shell", [bash, zsh], ids=["bash", "zsh"])
def test_service_function_and_session_names_are_asked_of_the_colony(  # type: ignore[no-untyped-def]
    shell, coral_env: CoralEnv, colony: Process, agent: Process, payments: NativeService
) -> None:
    wait_for_service(coral_env, "payments")
    assert shell(coral_env, "coralctl", "debug", "attach", "pay") == ["payments"]
    assert shell(coral_env, "coralctl", "functions", "") == ["payments"]
    assert shell(coral_env, "coralctl", "debug", "attach", "payments", "--function", "valid") == ["validate_card"]
    assert "pause_ms" in shell(coral_env, "coralctl", "debug", "attach", "payments", "--function", "")
    assert shell(coral_env, "coralctl", "--local", "debug", "attach", "payments", "--function", "valid") == \
        ["validate_card"]
    proc, first = start_attach(coral_env, "payments", "validate_card", "--duration", "1s", "--no-save")
    proc.communicate(timeout=30)
    assert shell(coral_env, "coralctl", "debug", "events", "dbg") == [first["session_id"]]


def test_a_daemon_that_does_not_answer_offers_nothing_quickly(coral_env: CoralEnv) -> None:
    env = CoralEnv(coral_env.root, {**coral_env.env, "CORAL_RUNTIME_DIR": str(coral_env.root / "nowhere")})
    assert bash(env, "coralctl", "debug", "attach", "") == []
    assert bash(env, "coralctl", "debug", "attach", "payments", "--function", "") == []


def test_locate_walks_options_and_their_values() -> None:
    pos = complete.locate(build_parser(), ["--local", "--output", "json", "debug", "attach", "svc", "--duration", "5s"])
    assert pos.path == ["debug", "attach"] and pos.positionals == ["svc"]
    assert pos.options == {"--output": "json", "--duration": "5s"} and pos.flags == {"--local"}
    asked: list[tuple[str, str]] = []

    def ask(what: str, detail: str) -> list[str]:
        asked.append((what, detail))
        return ["a::b(int)", "a::c"]

    words = ["coralctl", "debug", "attach", "svc", "--function", "a::"]
    assert complete.candidates(build_parser(), words, 5, ask) == ["a::b(int)", "a::c"]
    assert asked == [("functions", "svc\0a::")]


def test_bash_completes_a_name_holding_colons_as_one_word(tmp_path: Path) -> None:
    """Without the bash-completion package: bash cut `ns::wo` into `ns`,
    `::`, `wo`; coralctl is asked with the whole word, and bash, which
    keeps `ns::` in the line, is given only what follows it. (A stand-in
    coralctl answers: the names themselves come from a real colony in the
    test above.)"""
    asked = tmp_path / "asked"
    fake = tmp_path / "coralctl"
    fake.write_text(f'#!/bin/sh\nprintf "%s|" "$@" > {asked}\nprintf "ns::work\\nns::worker\\n"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ.get('PATH', '')}"}
    words = ["coralctl", "debug", "attach", "svc", "--function", "ns::wo"]
    line = " ".join(words)
    script = (f"source {BASH}; COMP_LINE='{line}'; COMP_POINT={len(line)}; "
              "COMP_WORDS=(coralctl debug attach svc --function ns :: wo); COMP_CWORD=7; _coralctl; "
              "printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True, env=env, timeout=30)
    assert out.stdout.split() == ["work", "worker"]
    assert asked.read_text() == "__complete|5|" + "|".join(words) + "|"
