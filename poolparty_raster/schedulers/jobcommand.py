"""What a job runs on its node (the user's set-up lines, then the node program), and the
scaling of the requests a retry after a wall-time or memory kill enlarges.

Set-up lines (``setup=["module load gdal", "source venv/bin/activate"]``) run in bash, the
job's own shell, before the node program starts: ``module`` and ``source`` are bash's, and the
lines are the user's own text, so they may sit in what a scheduler copies into its spool
(Grid Engine's is world-readable); the driver's environment stays in script.py (0600, in the
work_dir). What the lines change in the environment wins over the driver's values (their
names go into the node program's keep-list), since restoring the driver's PATH over a
``module load`` would undo it. A line that exits non-zero stops the job before the node
program starts: its output and the line go to the job's stderr and, for a chunk of an array
map, into the chunk's stderr capture, ending with :data:`SETUP_FAILED`, which the driver reads
to fail the chunk at once instead of running the same failure again.
"""
from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from typing import Annotated

from poolparty_raster.node import KEEP_VARIABLE  # names whose value on the node wins

# A cluster backend's ``setup`` option, declared once for all of them.
SetupLines = Annotated[Sequence[str], "shell lines run on the node before each job's Python "
                                      "starts ('module load gdal'), in bash"]
# The last line of a failed set-up's capture starts with this (arraymode.py reads it).
SETUP_FAILED = "poolparty_raster: setup line failed:"
BASH = "/bin/bash"
# The name the set-up shell gives itself ($0, in its error messages).
SHELL_NAME = "poolparty_raster-setup"


def checked_setup(lines: Sequence[str] | str) -> tuple[str, ...]:
    """``setup`` as a tuple of lines, its syntax checked by bash here on the driver (a typo
    fails the pool's creation, not every chunk); a plain string is one line."""
    lines = (lines,) if isinstance(lines, str) else tuple(lines)
    if not all(isinstance(line, str) for line in lines):
        raise TypeError(f"setup must be a list of shell lines (strings), not {lines!r}")
    bash = shutil.which("bash")
    if lines and bash is not None:  # a driver without bash leaves the check to the node
        check = subprocess.run([bash, "-n", "-c", _setup_text(lines, "0", "array", "/")],
                               capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ValueError(f"setup lines are not valid bash: {check.stderr.strip()}")
    return lines


def node_argv(python_path: str, script_path: str, worker_args: Sequence[str],
              setup: Sequence[str], mode: str = "array") -> list[str]:
    """The job's command as an argv: the node program, behind bash running ``setup`` if any.
    ``mode`` is the map's: only an array map's job runs one chunk, whose capture a failed
    set-up can write (a worker has none yet)."""
    return with_setup([python_path, script_path, *worker_args], setup, worker_args,
                      os.path.dirname(script_path), mode)


def with_setup(program: list[str], setup: Sequence[str], worker_args: Sequence[str],
               work_dir: str, mode: str) -> list[str]:
    """``program`` behind bash running ``setup`` (as the job sees ``work_dir``); itself when
    there is none."""
    if not setup:
        return program
    text = _setup_text(setup, _chunk_expression(worker_args), mode, work_dir)
    # One line: Grid Engine keeps a job argument only up to its first newline.
    return [BASH, "-c", f"eval {_one_line(text)}", SHELL_NAME, *program]


def node_shell_command(python_path: str, script_path: str, worker_args: Sequence[str],
                       setup: Sequence[str], mode: str = "array") -> str:
    """The same as one shell line (sbatch --wrap, bsub): ``exec`` replaces the wrapper."""
    return shlex.join(["exec", *node_argv(python_path, script_path, worker_args, setup, mode)])


def _one_line(text: str) -> str:
    """``text`` as a bash ANSI-C quoted word (``$'...'``) without a newline in it."""
    escaped = "".join(
        "\\\\" if c == "\\" else "\\'" if c == "'" else
        f"\\x{ord(c):02x}" if ord(c) < 32 or ord(c) == 127 else c for c in text)
    return f"$'{escaped}'"


def _chunk_expression(worker_args: Sequence[str]) -> str:
    """The chunk a job runs, as bash reads it: ``[12]`` -> ``12``; ``["--env", "SGE_TASK_ID",
    "--offset", "-1"]`` -> ``$(( ${SGE_TASK_ID} + -1 ))`` (as node.chunk_from_arguments)."""
    if len(worker_args) == 1:
        return str(int(worker_args[0]))
    options = dict(zip(worker_args[::2], worker_args[1::2]))
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", options["--env"]):
        raise ValueError(f"not a variable name: {options['--env']!r}")
    return f"$(( ${{{options['--env']}}} + {int(options.get('--offset', '0'))} ))"


def _setup_text(lines: Sequence[str], chunk: str, mode: str, work_dir: str) -> str:
    """The bash program: each line in this shell (its exports stay), its output kept aside;
    a failing line reported and the job ended; then the node program with the changed
    variables' names in its keep-list. The node program is the arguments after $0."""
    capture = ""
    if mode == "array":
        # The chunk's stderr capture, named as the node program's own live captures
        # (names.live_capture_name), created exclusively (noclobber), 0600 (umask).
        name = (f'chunk-$(printf %06d "{chunk}").stderr.$(hostname)-$$-$(date +%s%N).part')
        capture = (f'  (umask 077; set -C; cat "$_pp_log" - > {shlex.quote(work_dir)}/"{name}") '
                   '<<<"$_pp_said" 2>/dev/null\n')
    steps = []
    for number, line in enumerate(lines, 1):
        said = f"{SETUP_FAILED} line {number} of {len(lines)} ({line})"
        steps.append(f"{{ {line}\n}} >>\"$_pp_log\" 2>&1 </dev/null || "
                     f"_pp_failed \"$?\" {shlex.quote(said)}\n")
    return (
        '_pp_before=$(env)\n'
        '_pp_log=$(mktemp "${TMPDIR:-/tmp}/poolparty_raster-setup.XXXXXX") || exit 1\n'
        '_pp_failed() {\n'
        '  _pp_said="$2, exited $1"\n'
        '  { cat "$_pp_log"; printf "%s\\n" "$_pp_said"; } >&2\n'
        f'{capture}'
        '  rm -f "$_pp_log"\n'
        '  exit 1\n'
        '}\n'
        + "".join(steps) +
        'cat "$_pp_log" >&2; rm -f "$_pp_log"\n'
        '_pp_changed=$(env | grep -vxF -e "$_pp_before" '
        "| sed -n 's/^\\([A-Za-z_][A-Za-z0-9_]*\\)=.*/\\1/p' | tr '\\n' ,)\n"
        f'export {KEEP_VARIABLE}="$_pp_changed${{{KEEP_VARIABLE}:-}}"\n'
        'unset _pp_before _pp_log _pp_changed\n'
        'exec "$@"\n')


# -- requests a retry enlarges ---------------------------------------------------------------


def scale_clock(text: str, factor: float, plain_seconds: int) -> str:
    """A duration ``[D-]H:M:S``, ``M:S`` or a plain number (of ``plain_seconds`` each: 60
    for SLURM's minutes, 1 for Grid Engine's seconds) times ``factor``, rounded up to the
    second, as ``H:MM:SS`` (which every scheduler here reads)."""
    days, _, clock = text.strip().rpartition("-")
    try:
        parts = [float(p) for p in clock.split(":")]
        seconds = float(days or 0) * 86400
    except ValueError:
        raise ValueError(f"cannot read the duration {text!r}") from None
    if len(parts) == 1:
        seconds += parts[0] * (3600 if days else plain_seconds)
    elif len(parts) > 3:
        raise ValueError(f"cannot read the duration {text!r}")
    else:
        if days and len(parts) == 2:  # D-HH:MM
            parts.append(0)
        for part, unit in zip(reversed(parts), (1, 60, 3600)):
            seconds += part * unit
    total = math.ceil(seconds * factor)
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def scale_memory(text: str, factor: float) -> str:
    """A memory size, a number with an optional unit (``4G``, ``4000``, ``1.5gb``) times
    ``factor``, in the same unit, rounded up to a whole number of it."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None:
        raise ValueError(f"cannot read the memory size {text!r}")
    return f"{math.ceil(float(match.group(1)) * factor)}{match.group(2)}"
