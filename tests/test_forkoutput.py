"""LocalPool's fork server files what its children write (forkoutput.py): in the files a chunk
would make for itself, and only where a chunk writes something, so a chunk that prints nothing
costs no file in the work_dir (two creates and two removals a chunk, on a networked filesystem
each a round trip to its server). Each test runs a script of its own through the real server."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from poolparty_raster.names import loose_name
from poolparty_raster.schedulers import forkserver

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="LocalPool forks chunks through its server on Linux only")

PRELUDE = """\
import os, shutil, signal, sys
from poolparty_raster.schedulers.forkoutput import launcher
"""


def run_in_server(tmp_path: Path, body: str) -> tuple[int, Path]:
    """Run ``body`` as chunk 7's script in a work_dir of its own; (exit code, work_dir)."""
    work_dir = tmp_path / "w"
    work_dir.mkdir()
    script = work_dir / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    launch = forkserver.shared(sys.executable).launch(
        [str(script), "7"], str(work_dir), str(work_dir / "scheduler.log"))
    return launch.wait(), work_dir


def live_captures(work_dir: Path) -> dict[str, str]:
    return {p.name.split(".")[1]: p.read_text() for p in work_dir.glob("chunk-000007.*.part")}


def test_a_chunks_output_is_in_its_own_files_before_it_ends(tmp_path):
    code, work_dir = run_in_server(tmp_path, """\
        print("importing")               # before the chunk: the job's log
        launcher.start(7)
        print("a line")
        os.write(2, b"from C\\n")        # below Python's sys.stderr, as an extension writes
        launcher.finish(7)
        # The files exist once finish returns: the chunk's result, written next, is what
        # tells the driver the chunk is done.
        ok = (open("chunk-000007.stdout").read(), open("chunk-000007.stderr").read())
        print("after finishing")         # a thread the task left, say: kept for the driver
        sys.exit(0 if ok == ("a line\\n", "from C\\n") else 3)
        """)
    assert code == 0
    assert (work_dir / loose_name(7, "stdout")).read_text() == "a line\n"
    assert (work_dir / loose_name(7, "stderr")).read_text() == "from C\n"
    assert (work_dir / "scheduler.log").read_text() == "importing\n"
    assert live_captures(work_dir) == {"stdout": "after finishing\n"}


def test_a_chunk_that_writes_nothing_makes_no_file(tmp_path):
    # Its work_dir is gone while it runs: a capture file made (and removed) for nothing would
    # fail to be made, and the chunk with it.
    code, work_dir = run_in_server(tmp_path, """\
        shutil.rmtree(os.path.dirname(os.path.abspath(sys.argv[0])))
        launcher.start(7)
        launcher.finish(7)
        """)
    assert code == 0
    assert not work_dir.exists()


def test_what_a_killed_chunk_wrote_is_in_its_live_capture_when_its_end_is_reported(tmp_path):
    code, work_dir = run_in_server(tmp_path, """\
        launcher.start(7)
        print("last words", flush=True)
        os.write(2, b"no newline")
        os.kill(os.getpid(), signal.SIGKILL)
        """)
    assert code == -signal.SIGKILL
    assert live_captures(work_dir) == {"stdout": "last words\n", "stderr": "no newline"}
    assert not (work_dir / loose_name(7, "stdout")).exists()


def test_output_that_cannot_be_filed_fails_the_chunk_saying_why(tmp_path):
    said = tmp_path / "said"
    code, _ = run_in_server(tmp_path, f"""\
        launcher.start(7)
        shutil.rmtree(os.path.dirname(os.path.abspath(sys.argv[0])))
        print("lost")
        try:
            launcher.finish(7)
        except OSError as exc:
            open({str(said)!r}, "w").write(str(exc))
        """)
    assert code == 0
    message = said.read_text()
    assert "fork server could not write the chunk's output" in message
    assert "No such file or directory" in message


def test_a_script_the_driver_wrote_again_is_the_one_that_runs(tmp_path):
    # The server compiles each script once: a map's new script.py (the driver's environment
    # may have changed since the last map of the pool) must not run the old one's code.
    work_dir = tmp_path / "w"
    work_dir.mkdir()
    script = work_dir / "script.py"
    codes = []
    for code in (3, 4):
        fresh = work_dir / ".script.py.tmp"
        fresh.write_text(f"import sys\nsys.exit({code})\n")
        os.replace(fresh, script)  # as the driver writes it: a new file under the name
        launch = forkserver.shared(sys.executable).launch(
            [str(script), "7"], str(work_dir), str(work_dir / "scheduler.log"))
        codes.append(launch.wait())
    assert codes == [3, 4]
