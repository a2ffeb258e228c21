"""A work_dir is ours only when this package marked it: nothing else is written, overwritten or
deleted, nothing is followed through a symbolic link, and nothing is read from a directory that
another user could write (issue 21, data safety)."""
from __future__ import annotations

import os
import pickle
import stat
import subprocess
import sys

import cloudpickle
import pytest

import poolparty_raster as pp
from poolparty_raster import cli, node, ownership
from poolparty_raster.names import MARK_NAME
from poolparty_raster.workdir import WorkDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])

FAST = {"progress": False, "polling_interval": 0.2}
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown a directory to "
                               "another user (CI runs as root)")


def square(x):
    return x * x


def snapshot(path):
    """Every entry under ``path`` with its mode, owner and content: what "unchanged" means."""
    found = {}
    for top, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(top, name)
            info = os.lstat(full)
            content = open(full, "rb").read() if stat.S_ISREG(info.st_mode) else None
            found[os.path.relpath(full, path)] = (info.st_mode, info.st_uid, content)
    info = os.lstat(path)
    found["."] = (info.st_mode, info.st_uid, None)
    return found


@pytest.mark.parametrize("leftover_name", ["script.py", "log.jsonl", "scheduler.log", "tasks.zip"])
def test_a_users_file_with_a_work_dir_name_is_never_taken_for_ours(tmp_path, leftover_name):
    project = tmp_path / "project"
    project.mkdir(mode=0o700)
    (project / leftover_name).write_text("the user's own file")
    before = snapshot(project)
    with pytest.raises(pp.WorkDirMismatchError, match=f"{leftover_name}.*Nothing in it was changed"):
        pp.LocalPool(2, work_dir=str(project), **FAST).map(square, [1, 2])
    assert snapshot(project) == before


def test_work_dir_dot_in_a_project_folder_leaves_the_users_script_alone(tmp_path, monkeypatch):
    project = tmp_path / "project"
    project.mkdir(mode=0o700)
    (project / "script.py").write_text("print('my analysis')")
    monkeypatch.chdir(project)
    before = snapshot(project)
    with pytest.raises(pp.WorkDirMismatchError, match="not empty"):
        pp.LocalPool(2, work_dir=".", **FAST).map(square, [1, 2])
    assert snapshot(project) == before


def test_an_unrelated_manifest_json_names_what_was_found_and_changes_nothing(tmp_path):
    app = tmp_path / "webapp"
    app.mkdir(mode=0o755)
    (app / "manifest.json").write_text('{"name": "my extension", "version": "1.0"}')
    before = snapshot(app)
    with pytest.raises(pp.WorkDirMismatchError, match="manifest.json"):
        pp.LocalPool(2, work_dir=str(app), **FAST).map(square, [1])
    assert snapshot(app) == before  # mode 0755 kept, no driver.lock, no temporary file


def test_a_symlinked_work_dir_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    before = snapshot(target)
    with pytest.raises(pp.UnsafeWorkDirError, match="symbolic link.*real path"):
        pp.LocalPool(2, work_dir=str(link), **FAST).map(square, [1])
    assert snapshot(target) == before


def test_a_work_dir_others_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    before = snapshot(shared)
    with pytest.raises(pp.UnsafeWorkDirError, match="writable by group or others.*chmod go-w"):
        pp.LocalPool(2, work_dir=str(shared), **FAST).map(square, [1])
    assert snapshot(shared) == before


@root_only
def test_root_never_unpickles_from_another_users_work_dir(tmp_path):
    """A user prepares a work_dir with a planted result; root's driver must refuse it before
    reading anything (a result pickle can run any code as it loads)."""
    planted = tmp_path / "planted"
    WorkDir(str(planted)).create()
    sentinel = tmp_path / "pwned"

    class Plant:
        def __reduce__(self):
            return open, (str(sentinel), "w")  # runs as the result is unpickled
    (planted / "chunk-000000.result").write_bytes(pickle.dumps(([pickle.dumps(Plant())], [])))
    for top, dirs, files in os.walk(planted):
        for name in [top, *(os.path.join(top, f) for f in files)]:
            os.chown(name, 65534, 65534)
    with pytest.raises(pp.UnsafeWorkDirError, match="owned by uid 65534"):
        pp.LocalPool(2, work_dir=str(planted), **FAST).map(square, [0])
    with pytest.raises(SystemExit, match="owned by uid 65534"):
        cli.main(["inspect", str(planted), "--task", "0"])
    assert not sentinel.exists()


def test_a_new_work_dir_is_marked_private_and_removed_after_a_clean_map(tmp_path):
    work_dir = tmp_path / "new" / "w"
    pool = pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, **FAST)
    assert pool.map(square, range(4)) == [0, 1, 4, 9]
    assert stat.S_IMODE(os.lstat(work_dir).st_mode) == 0o700
    mark = ownership.read_mark(str(work_dir))
    assert mark is not None and mark.created_dir
    for entry in os.scandir(work_dir):
        if entry.is_file(follow_symlinks=False):
            assert stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) == 0o600, entry.name
    assert pp.LocalPool(2, work_dir=str(work_dir), **FAST).map(square, range(4)) == [0, 1, 4, 9]
    assert not work_dir.exists() and (tmp_path / "new").exists()


def mode_of(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_an_empty_directory_the_user_made_is_private_while_used_then_left_as_it_was(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    os.chmod(mine, 0o755)
    pool = pp.LocalPool(2, work_dir=str(mine), **FAST)
    assert pool.map(mode_of, [str(mine)] * 3) == [0o700] * 3  # others cannot read script.py
    assert mine.is_dir() and list(mine.iterdir()) == []
    assert stat.S_IMODE(os.lstat(mine).st_mode) == 0o755


def write_beside(work_dir):
    with open(os.path.join(work_dir, "notes.txt"), "a") as f:  # a task's own file, in the work_dir
        f.write("note\n")
    return 1


def test_a_file_a_task_left_in_the_work_dir_is_kept_with_the_directory(tmp_path):
    work_dir = tmp_path / "w"
    pool = pp.LocalPool(1, work_dir=str(work_dir), **FAST)
    with pytest.warns(RuntimeWarning, match="did not write.*notes.txt"):
        assert pool.map(write_beside, [str(work_dir)] * 2, chunksize=1) == [1, 1]
    assert sorted(p.name for p in work_dir.iterdir()) == sorted([MARK_NAME, "notes.txt"])


def test_removal_deletes_a_symlink_under_a_protocol_name_not_its_target(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "data.txt").write_text("keep me")
    work_dir = tmp_path / "w"
    mark = WorkDir(str(work_dir)).create()
    (work_dir / "claims").symlink_to(precious)
    (work_dir / "chunk-000000.result").symlink_to(precious / "data.txt")
    assert ownership.remove(str(work_dir), mark)
    assert not work_dir.exists()
    assert (precious / "data.txt").read_text() == "keep me"


def test_a_work_dir_replaced_during_the_map_is_not_removed(tmp_path):
    work_dir = tmp_path / "w"
    mark = WorkDir(str(work_dir)).create()
    os.unlink(work_dir / MARK_NAME)
    WorkDir(str(work_dir)).create()  # another map's mark at the same path
    with pytest.warns(RuntimeWarning, match="no longer the work_dir"):
        assert not ownership.remove(str(work_dir), mark)
    assert (work_dir / MARK_NAME).exists()


def test_the_node_refuses_a_work_dir_others_can_write(tmp_path, capsys):
    work_dir = tmp_path / "w"
    pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, **FAST).map(square, [1, 2])
    os.chmod(work_dir, 0o770)
    assert node.main(str(work_dir), ["0"]) == 2
    assert "writable by group or others" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["status"], ["report"], ["inspect"], ["clean", "--force"]])
def test_the_cli_refuses_a_symlink_with_a_message_not_a_traceback(tmp_path, command):
    work_dir = tmp_path / "w"
    pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, **FAST).map(square, [1, 2])
    link = tmp_path / "link"
    link.symlink_to(work_dir)
    before = snapshot(work_dir)
    done = subprocess.run([sys.executable, "-m", "poolparty_raster.cli", *command, str(link)],
                          capture_output=True, text=True)
    assert done.returncode != 0
    assert "symbolic link" in done.stderr and "Traceback" not in done.stderr
    assert snapshot(work_dir) == before


def test_the_cli_refuses_a_directory_others_can_write(tmp_path):
    work_dir = tmp_path / "w"
    pp.LocalPool(2, work_dir=str(work_dir), keep_work_dir=True, **FAST).map(square, [1, 2])
    os.chmod(work_dir, 0o777)
    with pytest.raises(SystemExit, match="writable by group or others"):
        cli.main(["clean", str(work_dir)])
    assert (work_dir / "manifest.json").exists()


def test_a_work_dir_of_an_earlier_version_is_refused_with_the_way_out(tmp_path):
    old = tmp_path / "old"
    old.mkdir(mode=0o700)
    (old / "manifest.json").write_text('{"format": 2}')
    (old / "tasks.zip").write_bytes(b"")
    with pytest.raises(pp.WorkDirMismatchError, match="before 0.2 has no mark"):
        pp.LocalPool(2, work_dir=str(old), **FAST).map(square, [1])
