"""Native details: C strings copied (bounded) in the kernel, and clear
refusals for a fully inlined function and a stripped binary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any, cast

from tests.harness import CoralEnv, Process, coralctl, start_agent, tool

GREETER = r"""
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) int greet(const char *name, int times) { return (int)strlen(name) * times; }
static inline int tiny(int x) { return x + 1; }
int main(void) {
    char line[200];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        printf("%d %d\n", greet(line, 2), tiny((int)strlen(line)));
        fflush(stdout);
    }
    return 0;
}
"""


def build(tmp_path: Path, *flags: str) -> Path:
    src = tmp_path / "greeter.c"
    src.write_text(GREETER)
    out = tmp_path / ("greeter" + "".join(flags).replace("-", "_"))
    subprocess.run(["gcc", "-g", "-O2", *flags, "-o", str(out), str(src)], check=True)
    return out


def run_service(env: CoralEnv, name: str, binary: Path) -> Process:
    return Process(f"run-{name}", [tool("coral-run"), "--service", name, "--", str(binary)], env,
                   stdin=subprocess.PIPE).wait_ready()


def test_c_string_arguments_are_copied_and_bounded(coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    run = run_service(coral_env, "greeter", build(tmp_path))
    try:
        p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "greeter", "--function",
                              "greet", "--duration", "2s", "--capture-args", "--capture-return"],
                             env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        assert json.loads(p.stdout.readline())["kind"] == "session"
        for name in ("alice", "b" * 150):
            run.proc.stdin.write(f"{name}\n".encode())
            run.proc.stdin.flush()
            run.proc.stdout.readline()
        out, _ = p.communicate(timeout=30)
        entries = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        assert entries[0]["args"] == [{"name": "name", "type": "const char *", "value": "'alice'"},
                                      {"name": "times", "type": "int", "value": "2"}]
        assert entries[1]["args"][0]["value"] == repr("b" * 63) + "…(truncated)"  # 64 bytes copied, NUL included
        rets = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        assert [r["return_value"]["value"] for r in rets] == ["10", "300"]
    finally:
        run.stop()


def test_inlined_and_stripped_functions_are_refused_with_the_reason(coral_env: CoralEnv, agent: Process,
                                                                   tmp_path: Path) -> None:
    run = run_service(coral_env, "greeter", build(tmp_path))
    stripped = run_service(coral_env, "stripped", build(tmp_path, "-s"))
    try:
        out = coralctl(coral_env, "--local", "debug", "attach", "greeter", "--function", "tiny")
        assert out.returncode == 1
        assert out.stderr.strip() == ("coralctl: tiny is fully inlined (no out-of-line copy to probe): "
                                      "mark it noinline to debug it")
        out = coralctl(coral_env, "--local", "debug", "attach", "stripped", "--function", "greet")
        assert out.returncode == 1 and "is stripped (no symbol table)" in out.stderr, out.stderr
    finally:
        run.stop()
        stripped.stop()


def test_the_string_bound_comes_from_the_config(coral_env: CoralEnv, bpf: None, tmp_path: Path) -> None:
    config = tmp_path / "coral.toml"
    config.write_text("[sessions]\nstring_bytes = 16\n")
    coral_env.env["CORAL_CONFIG"] = str(config)
    agent = start_agent(coral_env)
    run = run_service(coral_env, "greeter", build(tmp_path))
    try:
        p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "greeter", "--function",
                              "greet", "--duration", "1s", "--capture-args"], env=coral_env.env, stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        assert json.loads(p.stdout.readline())["kind"] == "session"
        run.proc.stdin.write(b"abcdefghijklmnopqrstuvwxyz\n")
        run.proc.stdin.flush()
        run.proc.stdout.readline()
        out, _ = p.communicate(timeout=30)
        (entry,) = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
        assert entry["args"][0]["value"] == "'abcdefghijklmno'…(truncated)"
    finally:
        run.stop()
        agent.stop()


LOGIN = r"""
#include <stdio.h>
#include <string.h>
__attribute__((noinline)) int login(const char *password, const char *note) {
    return (int)(strlen(password) + strlen(note));
}
int main(void) {
    char line[16];
    while (fgets(line, sizeof line, stdin)) {
        printf("%d\n", login("hunter2-hunter2", "card 4111 1111 1111 1111 ok"));
        fflush(stdout);
    }
    return 0;
}
"""


def test_native_secrets_are_redacted_before_they_are_stored(coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    """A C function's `password` argument by its name, a card number inside
    another string by its value: the agent redacts both before it stores or
    sends anything, so neither is in agent.duckdb, its WAL, or a log."""
    src = tmp_path / "login.c"
    src.write_text(LOGIN)
    binary = tmp_path / "login"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(binary), str(src)], check=True)
    run = run_service(coral_env, "login", binary)
    try:
        p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "login", "--function",
                              "login", "--duration", "2s", "--capture-args", "--no-save"],
                             env=coral_env.env, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
        assert json.loads(p.stdout.readline())["kind"] == "session"
        for _ in range(3):
            run.proc.stdin.write(b"go\n")
            run.proc.stdin.flush()
            run.proc.stdout.readline()
        out, _ = p.communicate(timeout=30)
    finally:
        run.stop()
    entries = [json.loads(line) for line in out.splitlines() if '"kind":"call"' in line]
    assert len(entries) == 3
    assert [a["value"] for a in entries[0]["args"]] == ["<redacted>", "'card <redacted> ok'"]  # both were copied
    assert agent.stop() == 0  # its database closed: everything it kept is on disk now
    for f in [*coral_env.state_dir.rglob("*"), *coral_env.root.glob("*.log")]:
        if f.is_file():
            data = f.read_bytes()
            assert b"hunter2" not in data and b"4111 1111" not in data, f


LABELS = r"""
// Each input line N: label(N) and both(N, label(N)); prints the labels.
#include <stdio.h>
#include <stdlib.h>
static const char *const NAMES[] = {"approved", "declined", "pending"};
__attribute__((noinline)) const char *label(int code) { return code >= 0 && code < 3 ? NAMES[code] : NULL; }
__attribute__((noinline)) const char *both(const char *a, const char *b) { return a ? a : b; }
int main(void) {
    char line[64];
    size_t touched = 0;
    for (int i = 0; i < 3; i++)
        touched += *(volatile const char *)NAMES[i]; /* their page is in memory: a probe cannot fault it in */
    while (fgets(line, sizeof line, stdin) && touched) {
        const char *l = label(atoi(line));
        printf("%s %s\n", l ? l : "(null)", both(l, "other"));
        fflush(stdout);
    }
    return 0;
}
"""


def test_a_string_result_is_followed(coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    """A `const char *` result is copied in the kernel at the return, as a
    string argument is: shown as the string, NULL as NULL. With two string
    arguments captured too, both of the record's string slots are theirs,
    and the result is shown as its address."""
    (tmp_path / "labels.c").write_text(LABELS)
    binary = tmp_path / "labels"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(binary), str(tmp_path / "labels.c")], check=True)
    run = run_service(coral_env, "labels", binary)
    try:
        sessions = []
        for function, flags in (("label", ["--capture-return"]), ("both", ["--capture-args", "--capture-return"])):
            p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", "labels",
                                  "--function", function, "--duration", "2s", "--no-save", *flags],
                                 env=coral_env.env, stdout=subprocess.PIPE, text=True)
            assert p.stdout is not None
            assert json.loads(p.stdout.readline())["kind"] == "session"
            sessions.append(p)
        assert run.proc.stdin is not None and run.proc.stdout is not None
        for code in (1, 7):
            run.proc.stdin.write(f"{code}\n".encode())
            run.proc.stdin.flush()
            run.proc.stdout.readline()
        label, both = ([json.loads(line) for line in p.communicate(timeout=30)[0].splitlines()
                        if '"kind":"call"' in line] for p in sessions)
        assert [(c["return_value"]["type"], c["return_value"]["value"]) for c in label] == [
            ("const char *", "'declined'"), ("const char *", "NULL")]
        assert [a["value"] for a in both[0]["args"]] == ["'declined'", "'other'"]
        assert both[0]["return_value"]["value"].startswith("0x"), both[0]
    finally:
        run.stop()


RUST_VALUES = r"""
// Each input line "WHO N": fee(WHO, N) (read, not constant: nothing is propagated into fee).
use std::io::BufRead;

#[inline(never)]
fn fee(who: &str, cents: i64) -> i64 {
    who.len() as i64 + cents
}

fn main() {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        let who = words.next().unwrap_or("");
        let n: i64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        println!("{}", fee(who, n));
    }
}
"""

CXX_VALUES = r"""
// Each input line N: pay::fee(N, total) and pay::name_of(N).
#include <cstdio>
#include <cstdlib>
#include <string>
namespace pay {
__attribute__((noinline)) long fee(long cents, long &total) { total += cents; return cents * 2; }
__attribute__((noinline)) std::string name_of(int code) { return code ? "declined" : "ok"; }
}
int main() {
    char line[64];
    long total = 0;
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        long r = pay::fee(n, total);
        printf("%ld %ld %s\n", r, total, pay::name_of(n).c_str());
        fflush(stdout);
    }
}
"""


def _one_call(env: CoralEnv, run: Process, service: str, function: str, line: str) -> dict[str, Any]:
    p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", service, "--function",
                          function, "--duration", "1s", "--no-save", "--capture-args", "--capture-return"],
                         env=env.env, stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
    assert json.loads(p.stdout.readline())["kind"] == "session"
    run.proc.stdin.write(f"{line}\n".encode())
    run.proc.stdin.flush()
    run.proc.stdout.readline()
    (call,) = [json.loads(out) for out in p.communicate(timeout=30)[0].splitlines() if '"kind":"call"' in out]
    return cast(dict[str, Any], call)


def test_rust_and_cxx_values_as_the_language_writes_them(coral_env: CoralEnv, agent: Process, tmp_path: Path) -> None:
    """Rust: a `&str` is a pointer and a length in two registers, shown as
    the string; `i64` at its width and sign. C++: a reference is an
    address (`long int &`), never read as the number it refers to; a
    function returning std::string is named without GCC's ABI tag
    (`pay::name_of`, whose symbol demangles to `pay::name_of[abi:cxx11](int)`),
    and as it returns std::string through memory, its argument is read
    from the second register, and its result is the string (RAX holds the
    address of the std::string it wrote; tests/test_language_values.py)."""
    (tmp_path / "fees.rs").write_text(RUST_VALUES)
    (tmp_path / "pay.cpp").write_text(CXX_VALUES)
    # opt-level 0: optimized, LLVM may drop or split a Rust function's arguments (its ABI is its own),
    # and values are placed by the ABI's order, not by DWARF location lists (docs/native-targets.md)
    subprocess.run(["rustc", "-g", "-C", "opt-level=0", "-o", str(tmp_path / "fees"), str(tmp_path / "fees.rs")],
                   check=True)
    subprocess.run(["g++", "-g", "-O1", "-o", str(tmp_path / "pay"), str(tmp_path / "pay.cpp")], check=True)
    rust, cxx = run_service(coral_env, "fees", tmp_path / "fees"), run_service(coral_env, "pay", tmp_path / "pay")
    try:
        call = _one_call(coral_env, rust, "fees", "fees::fee", "alice -3")
        assert call["args"] == [{"name": "who", "type": "&str", "value": "'alice'"},
                                {"name": "cents", "type": "i64", "value": "-3"}], call
        assert call["return_value"]["value"] == "2", call
        call = _one_call(coral_env, cxx, "pay", "pay::fee", "4")
        cents, total = call["args"]
        assert cents == {"name": "cents", "type": "long int", "value": "4"}
        assert total["type"] == "long int &" and total["value"].startswith("0x7ff"), total
        call = _one_call(coral_env, cxx, "pay", "pay::name_of", "1")  # its std::string comes back through memory:
        assert call["args"] == [{"name": "code", "type": "int", "value": "1"}], call  # RDI is where, code is in RSI
        assert call["return_value"]["value"] == "'declined'", call  # read through the address it was written at
    finally:
        rust.stop()
        cxx.stop()


ORDERS = r"""
// Each input line N: charge(&order) with order.cents = N.
#include <stdio.h>
#include <stdlib.h>
struct order { long cents; int items; const char *note; long card_number; };
__attribute__((noinline)) long charge(const struct order *o, int retries) { return o->cents * o->items + retries; }
int main(void) {
    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        struct order o = {atol(line), 3, "gift", 4111111111111111L};
        printf("%ld\n", charge(&o, 1));
        fflush(stdout);
    }
    return 0;
}
"""


def test_the_fields_of_a_struct_passed_by_pointer_are_shown(coral_env: CoralEnv, agent: Process,
                                                            tmp_path: Path) -> None:
    """The kernel copies the struct's first bytes through the pointer (at
    the return), and each scalar or pointer member is shown by its DWARF
    name and type; a member whose name is redacted stays redacted."""
    (tmp_path / "orders.c").write_text(ORDERS)
    binary = tmp_path / "orders"
    subprocess.run(["gcc", "-g", "-O1", "-o", str(binary), str(tmp_path / "orders.c")], check=True)
    run = run_service(coral_env, "orders", binary)
    try:
        call = _one_call(coral_env, run, "orders", "charge", "250")
        o, retries = call["args"]
        assert o["name"] == "o" and o["type"] == "const struct order *", o
        address, fields = o["value"].split(" ", 1)
        assert address.startswith("0x7ff"), o
        assert fields.startswith("{cents=250, items=3, note=0x") and fields.endswith(", card_number=<redacted>}"), o
        assert retries == {"name": "retries", "type": "int", "value": "1"}
        assert call["return_value"]["value"] == "751"
    finally:
        run.stop()
