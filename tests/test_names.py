"""Functions by the names people write. C++ and Rust functions are listed
and attached by their demangled names (`pay::fee(long, int)`, or `pay::fee`
when only one function has it); a name several functions share (overloads,
template instantiations, static functions of several files) is refused
with the candidates; a static function is named by its file
(`fees.c:helper`); a shared library's function by the library
(`libfees.so:fee_total`), in a native program as in a Python service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from elftools.elf.elffile import ELFFile

from coral.elfinfo import AmbiguousName, ElfFunctions, build_id_of, debug_file_for
from tests.harness import CoralEnv, Process, coralctl, tool

CXX = r"""
#include <cstdio>
#include <cstdlib>
namespace pay {
__attribute__((noinline)) long fee(long cents, int percent) { return cents * percent / 100; }
__attribute__((noinline)) double fee(double cents) { return cents * 0.03; }
template <class T> __attribute__((noinline)) T total(T a, T b) { return a + b; }
struct Account {
    long balance;
    __attribute__((noinline)) long charge(long cents) const { return balance - cents; }
};
}
int main()
{
    char line[64];
    setvbuf(stdout, nullptr, _IOLBF, 0);
    pay::Account acct{1000};
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        long sum = 0;
        for (int i = 0; i < n; i++)
            sum += pay::fee(1000 + i, 3) + (long)pay::fee(2.0 * i) + pay::total<int>(i, 1) + pay::total<long>(i, 2)
                   + acct.charge(i);
        printf("done %d sum %ld\n", n, sum);
    }
    return 0;
}
"""

# Two files with a static helper each, of different signatures.
FEES_C = r"""
static __attribute__((noinline)) long helper(long cents, int percent) { return cents * percent / 100; }
long fees(long cents) { return helper(cents, 3); }
"""
NAMES_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
long fees(long cents);
static __attribute__((noinline)) int helper(const char *name) { return (int)strlen(name); }
long fee_total(long a, long b);  /* in libfees.so */
int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        long sum = 0;
        for (int i = 0; i < n; i++)
            sum += fees(1000 + i) + helper("card") + fee_total(i, 1);
        printf("done %d sum %ld\n", n, sum);
    }
    return 0;
}
"""
LIBFEES_C = r"""
__attribute__((noinline)) long fee_total(long a, long b) { return a + b; }
"""

RUST = r"""
mod pay {
    #[inline(never)]
    pub fn fee(cents: i64, percent: i64) -> i64 { cents * percent / 100 }
}
fn main() {
    let n: i64 = std::env::args().count() as i64;
    println!("{}", pay::fee(1000 * n, 3));
}
"""


@pytest.fixture(scope="module")
def cxx_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cxx")
    (d / "pay.cc").write_text(CXX)
    subprocess.run(["g++", "-g", "-O1", "-o", str(d / "pay"), str(d / "pay.cc")], check=True)
    return d / "pay"


def split_debug(library: Path, into: Path) -> None:
    """Move `library`'s DWARF to `into` and leave a .gnu_debuglink to it, as
    distributions build their -dbg packages."""
    into.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["objcopy", "--only-keep-debug", str(library), str(into)], check=True)
    subprocess.run(["strip", "--strip-debug", str(library)], check=True)
    subprocess.run(["objcopy", f"--add-gnu-debuglink={into}", str(library)], check=True)


def build_names(d: Path) -> Path:
    """The C program with a static helper in each of its two files, linked
    with libfees.so, whose DWARF is in .debug/libfees.so.debug beside it."""
    for name, text in (("fees.c", FEES_C), ("names.c", NAMES_C), ("libfees.c", LIBFEES_C)):
        (d / name).write_text(text)
    subprocess.run(["gcc", "-g", "-O1", "-shared", "-fPIC", "-o", str(d / "libfees.so"), str(d / "libfees.c")], check=True)
    split_debug(d / "libfees.so", d / ".debug" / "libfees.so.debug")
    subprocess.run(["gcc", "-g", "-O1", "-o", str(d / "names"), str(d / "names.c"), str(d / "fees.c"),
                    f"-L{d}", "-lfees", f"-Wl,-rpath,{d}"], check=True)
    return d / "names"


@pytest.fixture(scope="module")
def c_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_names(tmp_path_factory.mktemp("c"))


def test_cxx_functions_are_listed_and_found_by_their_demangled_names(cxx_binary: Path) -> None:
    elf = ElfFunctions.load(str(cxx_binary))
    listed = elf.names("pay::*")
    assert {"pay::fee(long, int)", "pay::fee(double)", "pay::Account::charge(long) const",
            "int pay::total<int>(int, int)", "long pay::total<long>(long, long)"} <= set(listed), listed
    assert "main" in elf.names() and "_ZN3pay3feeEli" not in elf.names()
    assert elf.names("_ZN3pay3feeE*") == ["pay::fee(double)", "pay::fee(long, int)"]  # the symbol matches too
    one = elf.function("pay::fee(long, int)")
    assert one is not None and one.name == "pay::fee(long, int)"
    assert [p.name for p in one.parameters] == ["cents", "percent"]  # DWARF, by the function's address
    assert elf.function("_ZN3pay3feeEli") == one  # the symbol still names it
    assert elf.function("pay::fee(long,int)") == one == elf.function("pay::fee( long , int )")  # other spaces
    charge = elf.function("pay::Account::charge")  # one function has that name: no parameters needed
    assert charge is not None and [p.name for p in charge.parameters][-1:] == ["cents"]
    assert elf.function("pay::total<long>") is not None
    with pytest.raises(AmbiguousName) as refused:
        elf.function("pay::fee")
    assert refused.value.candidates == ["pay::fee(double)", "pay::fee(long, int)"]
    assert "'pay::fee' names 2 functions" in str(refused.value)
    with pytest.raises(AmbiguousName) as refused:
        elf.function("pay::total")
    assert refused.value.candidates == ["int pay::total<int>(int, int)", "long pay::total<long>(long, long)"]
    assert elf.function("pay::nope") is None and "pay::fee" in elf.closest("pay::fe")


def test_static_functions_are_told_apart_by_their_file(c_binary: Path) -> None:
    elf = ElfFunctions.load(str(c_binary))
    assert {"fees.c:helper", "names.c:helper", "fees", "main"} <= set(elf.names()), elf.names()
    assert "helper" not in elf.names()
    with pytest.raises(AmbiguousName) as refused:
        elf.function("helper")
    assert refused.value.candidates == ["fees.c:helper", "names.c:helper"]
    fees, names = elf.function("fees.c:helper"), elf.function("names.c:helper")
    assert fees is not None and names is not None and fees.address != names.address
    assert [(p.name, p.type) for p in fees.parameters] == [("cents", "long int"), ("percent", "int")]
    assert [(p.name, p.type) for p in names.parameters] == [("name", "const char *")]


def test_rust_functions_are_found_by_their_path(tmp_path: Path) -> None:
    (tmp_path / "fees.rs").write_text(RUST)
    subprocess.run(["rustc", "-g", "-C", "opt-level=1", "-o", str(tmp_path / "fees"), str(tmp_path / "fees.rs")],
                   check=True, capture_output=True)
    elf = ElfFunctions.load(str(tmp_path / "fees"))
    assert elf.names("*pay::fee") == ["fees::pay::fee"]
    fee = elf.function("fees::pay::fee")
    assert fee is not None and [p.name for p in fee.parameters] == ["cents", "percent"]


def run_service(env: CoralEnv, name: str, binary: Path) -> Process:
    return Process(f"run-{name}", [tool("coral-run"), "--service", name, "--", str(binary)], env,
                   stdin=subprocess.PIPE).wait_ready()


def attach_and_call(env: CoralEnv, run: Process, service: str, function: str, calls: int) -> list[dict[str, Any]]:
    """Attach for 2 s with arguments, make `calls` calls, return the JSON lines."""
    p = subprocess.Popen([tool("coralctl"), "--local", "--output", "json", "debug", "attach", service, "--function",
                          function, "--duration", "2s", "--capture-args", "--capture-return"],
                         env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None and run.proc.stdin is not None and run.proc.stdout is not None
    first = p.stdout.readline()
    assert first, p.communicate(timeout=30)[1]
    assert json.loads(first)["kind"] == "session"
    run.proc.stdin.write(f"{calls}\n".encode())
    run.proc.stdin.flush()
    assert run.proc.stdout.readline().decode().startswith(f"done {calls} ")
    out, _ = p.communicate(timeout=30)
    return [json.loads(first)] + [json.loads(line) for line in out.splitlines()]


def test_attach_by_demangled_name_static_file_and_library(coral_env: CoralEnv, agent: Process, cxx_binary: Path,
                                                          c_binary: Path) -> None:
    cxx, c = run_service(coral_env, "pay-cxx", cxx_binary), run_service(coral_env, "pay-c", c_binary)
    try:
        listed = coralctl(coral_env, "--local", "functions", "pay-cxx", "--pattern", "pay::fee*").stdout.splitlines()
        names = [line.split("  ")[0] for line in listed]  # NAME, two spaces or more, FILE:LINE
        assert names[:2] == ["pay::fee(double)", "pay::fee(long, int)"], listed
        assert [line.split()[-1] for line in listed[:2]] == ["pay.cc:6", "pay.cc:5"], listed
        refused = coralctl(coral_env, "--local", "debug", "attach", "pay-cxx", "--function", "pay::fee")
        assert refused.returncode == 1
        assert "'pay::fee' names 2 functions" in refused.stderr and "pay::fee(double), pay::fee(long, int)" in refused.stderr

        lines = attach_and_call(coral_env, cxx, "pay-cxx", "pay::fee(long, int)", 5)
        assert lines[0]["function"] == "pay::fee(long, int)"
        calls = [line for line in lines if line["kind"] == "call"]
        assert len(calls) == 5 and lines[-1]["calls"] == 5
        assert [a["name"] for a in calls[0]["args"]] == ["cents", "percent"]
        assert [a["value"] for a in calls[4]["args"]] == ["1004", "3"]
        assert calls[4]["return_value"]["value"] == "30"

        lines = attach_and_call(coral_env, c, "pay-c", "fees.c:helper", 3)
        calls = [line for line in lines if line["kind"] == "call"]
        assert len(calls) == 3 and [a["name"] for a in calls[0]["args"]] == ["cents", "percent"]
        assert [a["value"] for a in calls[2]["args"]] == ["1002", "3"]

        # A function of a shared library the program linked, by the library's name.
        listed = coralctl(coral_env, "--local", "functions", "pay-c", "--pattern", "libfees*:*").stdout.split()
        assert "libfees.so:fee_total" in listed, listed
        lines = attach_and_call(coral_env, c, "pay-c", "libfees.so:fee_total", 4)
        calls = [line for line in lines if line["kind"] == "call"]
        assert len(calls) == 4 and [a["value"] for a in calls[3]["args"]] == ["3", "1"]
        assert [a["name"] for a in calls[3]["args"]] == ["a", "b"]  # from its separate debug file
        assert lines[-1]["calls"] == 4
    finally:
        cxx.stop()
        c.stop()


INLINED_C = r"""
#include <stdio.h>
#include <stdlib.h>
long fee(long cents) { return cents * 3 / 100; }   /* inlined into main at -O2, and kept out of line */
long (*volatile by_pointer)(long) = fee;           /* calls through it reach the out-of-line copy */
int main(void)
{
    char line[64];
    setvbuf(stdout, NULL, _IOLBF, 0);
    while (fgets(line, sizeof line, stdin)) {
        int n = atoi(line);
        long sum = 0;
        for (int i = 0; i < n; i++)
            sum += fee(1000 + i) + by_pointer(2000 + i);
        printf("done %d sum %ld\n", n, sum);
    }
    return 0;
}
"""


def test_a_partly_inlined_function_says_its_inlined_calls_are_not_seen(coral_env: CoralEnv, agent: Process,
                                                                       tmp_path: Path) -> None:
    (tmp_path / "inlined.c").write_text(INLINED_C)
    binary = tmp_path / "inlined"
    subprocess.run(["gcc", "-g", "-O2", "-o", str(binary), str(tmp_path / "inlined.c")], check=True)
    fee = ElfFunctions.load(str(binary)).function("fee")
    assert fee is not None and fee.inlined_into == ("main",)
    run = run_service(coral_env, "inlined", binary)
    try:
        text = coralctl(coral_env, "--local", "debug", "attach", "inlined", "--function", "fee", "--duration", "0.5s")
        assert "Inlined: 1 call site is inlined into main; those calls are not seen" in text.stdout, text
        lines = attach_and_call(coral_env, run, "inlined", "fee", 4)
        assert lines[0]["inlined_into"] == ["main"]
        assert lines[-1]["calls"] == 4  # the calls through the pointer: the inlined ones are not seen
    finally:
        run.stop()


def test_a_stripped_library_is_read_through_its_separate_debug_file(tmp_path: Path) -> None:
    """Found by build id under the debug root, or by .gnu_debuglink beside
    the file or in .debug/ (its CRC-32 checked); without one, no DWARF."""
    (tmp_path / "libfees.c").write_text(LIBFEES_C)
    lib = tmp_path / "libfees.so"

    def build() -> None:
        subprocess.run(["gcc", "-g", "-O1", "-shared", "-fPIC", "-Wl,--build-id", "-o", str(lib),
                        str(tmp_path / "libfees.c")], check=True)

    def parameters() -> list[str]:
        info = ElfFunctions.load(str(lib)).function("fee_total")
        assert info is not None
        return [p.name for p in info.parameters]

    build()
    split_debug(lib, tmp_path / "libfees.so.debug")
    assert parameters() == ["a", "b"]  # beside it
    (tmp_path / "libfees.so.debug").write_bytes(b"not the debug file")
    assert parameters() == []  # its CRC-32 does not match: not read
    build()
    root = tmp_path / "debug-root"
    with open(lib, "rb") as f:
        build_id = build_id_of(ELFFile(f))
    split_debug(lib, root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug")
    with open(lib, "rb") as f:
        found = debug_file_for(str(lib), ELFFile(f), root=str(root))
    assert found == str(root / ".build-id" / build_id[:2] / f"{build_id[2:]}.debug")
