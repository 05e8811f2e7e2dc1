"""Python frames for profiles (coral/agentd/pyframes.py): the line table
read as CPython reads it, code objects read from a live process's memory by
the layout its SDK reports, the frames put where the interpreter runs them,
and a layout checked before it is used. The BPF side is tested end to end
in tests/test_profile.py."""

from __future__ import annotations

import os
import shutil
import sys
import types
from pathlib import Path

import pytest

from coral.agentd import pyframes
from coral.agentd.symbolize import Frame
from coral.proto import coral_pb2 as pb
from coral.sdk import _probe
from coral.sdk.server import python_layout

pytestmark = [pytest.mark.fast, pytest.mark.skipif(sys.version_info < (3, 11), reason="frames as objects before 3.11")]


def sample(values: list[int], threshold: int) -> int:
    total = 0
    for v in values:
        if v > threshold:
            total += v
        else:
            total -= (
                v
            )
    try:
        return total // len(values)
    except ZeroDivisionError:
        return 0


class Service:
    def charge(self, amount: int) -> int:
        return amount * 2


def test_line_ranges_agree_with_the_interpreter() -> None:
    """co_lines() is CPython's own reading of the same table: the same line
    for every instruction."""
    for code in (sample.__code__, Service.charge.__code__, pyframes.line_ranges.__code__,
                 test_line_ranges_agree_with_the_interpreter.__code__):
        ours = {unit: line or None for start, end, line in pyframes.line_ranges(code.co_linetable, code.co_firstlineno)
                for unit in range(start, end)}
        theirs = {unit: line for start, end, line in code.co_lines() for unit in range(start // 2, end // 2)}
        assert ours == theirs, code.co_name


def test_a_broken_line_table_ends_where_it_breaks() -> None:
    assert pyframes.line_ranges(b"", 10) == ()
    assert pyframes.line_ranges(bytes([0x80 | (14 << 3)]), 10) == ()  # a long form cut short
    assert pyframes.line_ranges(bytes([0x80 | (13 << 3), 4, 0x80 | (15 << 3) | 1]), 10) == ((0, 1, 12), (1, 3, 0))


def test_code_objects_are_read_from_the_process_memory() -> None:
    """This very process, read through /proc/self/mem as the agent reads a target."""
    layout = python_layout()
    assert layout is not None and pyframes.check_layout(layout) == ""
    reader = pyframes.PythonFrames(os.getpid(), layout)
    code = Service.charge.__code__
    first = layout.code_adaptive + id(code)
    [frame] = reader.frames(((id(code), first + 2 * 3),))
    assert frame == Frame("Service.charge", __file__, code.co_firstlineno + 1, "python")
    assert reader.memory.file is None  # /proc/PID/mem is open only while frames() reads
    unicode = types.FunctionType(compile("def café(): pass", "/tmp/ünïcode.py", "exec").co_consts[0], {})
    [frame] = reader.frames(((id(unicode.__code__), 0),))
    assert (frame.function, frame.file) == ("café", "/tmp/ünïcode.py")
    # Garbage addresses, as a hostile layout or a freed object would give: a frame named [python].
    assert reader.frames(((0x10, 0), (1 << 46, 0))) == [pyframes.UNKNOWN, pyframes.UNKNOWN]


def test_python_frames_go_where_the_interpreter_runs_them() -> None:
    native = [Frame(n) for n in ("_start", "Py_RunMain", "_PyEval_EvalFrameDefault", "_PyFunction_Vectorcall",
                                 "_PyEval_EvalFrameDefault", "PyObject_Free")]
    python = [Frame(n, module="python") for n in ("<module>", "serve", "hot_path")]
    assert [f.function for f in pyframes.merge(native, python)] == [
        "_start", "Py_RunMain", "<module>", "serve", "hot_path", "PyObject_Free"]
    # A walk cut before the interpreter: what it has is the innermost frames, under the Python ones.
    assert [f.function for f in pyframes.merge(native[-1:], python)] == ["<module>", "serve", "hot_path", "PyObject_Free"]
    assert pyframes.merge(native, []) == native


def test_a_layout_is_checked_before_it_is_used() -> None:
    good = python_layout()
    assert good is not None
    old = pb.PythonLayout()
    old.CopyFrom(good)
    old.version_hex = 0x030A0000
    assert pyframes.check_layout(old) == "python_layout.version_hex must be CPython 3.11 or later"
    far = pb.PythonLayout()
    far.CopyFrom(good)
    far.frame_previous = 1 << 20
    assert pyframes.check_layout(far) == "python_layout.frame_previous must be below 65536"
    nowhere = pb.PythonLayout()
    nowhere.CopyFrom(good)
    nowhere.interpreter = 0
    assert pyframes.check_layout(nowhere) == "python_layout.interpreter must not be 0"
    assert _probe.python_layout() is not None


def test_files_are_read_once_per_build_id(tmp_path: Path) -> None:
    """unwind.PerFile, which the profiles' and --stack's symbols and unwind
    tables share: the same build at two paths is read once; another build,
    or a file without a build-id, on its own."""
    from coral.agentd.unwind import PerFile, build_id
    from coral.procmaps import Mapping

    one = tmp_path / "one.so"
    shutil.copy(sys.executable, one)
    same = tmp_path / "copy" / "one.so"
    same.parent.mkdir()
    shutil.copy(sys.executable, same)
    plain = tmp_path / "plain"
    plain.write_bytes(b"not an ELF file")
    read: list[str] = []

    def reading(path: str) -> str:
        read.append(path)
        return path

    files: PerFile[str] = PerFile(reading, 8)

    def get(path: Path) -> str | None:
        return files.get(os.getpid(), Mapping(0, 1, 0, 0, "r-xp", str(path)))

    assert build_id(str(one)) and build_id(str(one)) == build_id(str(same)) and build_id(str(plain)) == ""
    assert get(one) == get(same) == get(one)
    assert get(plain) is not None and get(plain) == get(plain)
    assert len(read) == 2, read
