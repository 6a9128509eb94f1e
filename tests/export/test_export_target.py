"""Where `ruclip-tiny export` writes: ``--force`` replaces a bundle and nothing else, killed exports' staging folders
are cleaned up (never a live one's), and every file-system failure ends in one error line naming the path and the fix.

CLI tests run the real ``ruclip-tiny`` command in a subprocess; none of them exports a whole bundle.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from export.bundle import BUNDLE_BYTES_ESTIMATE, BUNDLE_OWNERSHIP, ExportError, export_bundle, os_error_message
from ruclip_tiny.fileio import (
    STAGING_OWNER,
    check_target,
    foreign_entries,
    make_staging_directory,
    remove_stale_staging,
    replace_directory,
)
from tests.export.older_bundle import PROBE_FILE, write_older_bundle

ROOT = Path(__file__).resolve().parents[2]
NEEDS = f"{BUNDLE_BYTES_ESTIMATE / 1e6:.0f} MB"


# The real command: the console script beside this interpreter, or the same ``main`` when it is not installed.
_SCRIPT = Path(sys.executable).with_name("ruclip-tiny")
COMMAND = [str(_SCRIPT)] if _SCRIPT.is_file() else [
    sys.executable, "-c", "import sys; from ruclip_tiny.cli import main; sys.exit(main())"]


def ruclip_tiny(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line the command ended with (and proof that it printed no traceback)."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]
    assert errors[0].startswith("ruclip-tiny export: error: ")
    return errors[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its content (None for directories)."""
    return {p.relative_to(root).as_posix(): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def hidden_entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --- --force replaces a bundle, and nothing else ---------------------------------------------------------------------


def test_force_refuses_a_directory_that_is_not_a_bundle_and_touches_nothing(tmp_path):
    user = tmp_path / "u"
    (user / "photos").mkdir(parents=True)
    (user / "notes.txt").write_text("x\n")
    before = snapshot(user)
    result = ruclip_tiny("export", "--out", str(user), "--force")
    assert result.returncode == 2
    line = error_line(result)
    assert str(user) in line and "manifest.json" in line and "nothing was changed" in line
    assert snapshot(user) == before
    assert hidden_entries(tmp_path) == [], "no staging directory was even created"


@pytest.mark.parametrize("foreign", ["notes.txt", "photos/", f"{Path(PROBE_FILE).parent}/my-photo.jpg"])
def test_force_refuses_a_bundle_with_anything_beside_its_own_files(tmp_path, foreign):
    out = write_older_bundle(tmp_path / "bundle")
    if foreign.endswith("/"):
        (out / foreign).mkdir()
    else:
        (out / foreign).write_text("the user's")
    before = snapshot(out)
    with pytest.raises(ExportError, match="holds files that are not its bundle's own") as refused:
        export_bundle(out, force=True)
    assert str(out) in str(refused.value) and foreign in str(refused.value)
    assert snapshot(out) == before
    assert hidden_entries(tmp_path) == []


@pytest.mark.parametrize("manifest", ['{"schema_version": 1, "model_id": "someone-elses-model"}', '{"a": 1}', "[]",
                                      "not json"])
def test_force_refuses_a_manifest_this_project_did_not_write(tmp_path, manifest):
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    with pytest.raises(ExportError, match=r"is not a bundle written by ruclip-tiny export \(its manifest\.json"):
        export_bundle(out, force=True)
    assert (out / "manifest.json").read_text() == manifest


def test_an_older_bundle_with_engines_reports_and_an_interrupted_write_is_a_bundle(tmp_path):
    out = write_older_bundle(tmp_path / "bundle")
    assert foreign_entries(out, BUNDLE_OWNERSHIP) == []
    check_target(out, force=True, ownership=BUNDLE_OWNERSHIP)  # raises when refused
    with pytest.raises(ExportError, match="already exists; pass --force"):
        check_target(out, force=False, ownership=BUNDLE_OWNERSHIP)


def test_files_added_while_the_export_ran_stop_the_replacement(tmp_path):
    out = write_older_bundle(tmp_path / "bundle")
    staging = make_staging_directory(out)
    (staging / "manifest.json").write_text("{}")
    (out / "notes.txt").write_text("written while the export ran")
    with pytest.raises(ExportError, match="notes.txt"):
        replace_directory(staging, out, BUNDLE_OWNERSHIP, force=True)
    assert (out / "notes.txt").is_file() and (out / "manifest.json").read_text() != "{}"

    (out / "notes.txt").unlink()
    replace_directory(staging, out, BUNDLE_OWNERSHIP, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json"], "the staging owner record is not carried over"
    assert hidden_entries(tmp_path) == [], "the retired bundle is removed"


# --- staging folders of killed exports ----------------------------------------------------------------------------


def _wait_for_marked_staging(directory: Path, name: str, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 60
    while True:
        marked = [p for p in directory.glob(f".{name}.partial-*") if (p / STAGING_OWNER).is_file()]
        if marked:
            return marked[0]
        assert process.poll() is None and time.monotonic() < deadline, "the export never created its staging folder"
        time.sleep(0.05)


def test_the_next_export_removes_a_killed_exports_staging_says_so_and_keeps_a_live_ones(tmp_path):
    target = tmp_path / "bundle"
    killed = subprocess.Popen([*COMMAND, "export", "--out", str(target)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        dead = _wait_for_marked_staging(tmp_path, "bundle", killed)
        (dead / "reference.safetensors").write_bytes(b"\0" * 2_000_000)  # what it had written so far
    finally:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
    live = make_staging_directory(target)  # owned by this test process, which runs
    unmarked = tmp_path / ".bundle.partial-0ld0ne00"  # an export that recorded no owner: cannot be told
    unmarked.mkdir()

    # the next export to the same target (it fails at once on its missing checkpoint, after the clean-up)
    result = ruclip_tiny("export", "--out", str(target), "--checkpoint", str(tmp_path / "missing.pkl"))
    assert result.returncode == 2 and "missing.pkl" in error_line(result)
    assert not dead.exists()
    assert f"removed {dead} (2 MB), left by a run (pid {killed.pid}) that no longer runs" in result.stdout
    assert live.is_dir() and str(live) not in result.stdout
    assert unmarked.is_dir()
    assert hidden_entries(tmp_path) == sorted([live.name, unmarked.name]), "the failed export removed its own staging"


def _staging_with_owner(target: Path, **changes) -> Path:
    staging = make_staging_directory(target)
    record = json.loads((staging / STAGING_OWNER).read_text())
    (staging / STAGING_OWNER).write_text(json.dumps({**record, **changes}))
    return staging


def test_a_reused_pid_or_a_reboot_makes_staging_stale_but_another_host_or_namespace_keeps_it(tmp_path):
    target = tmp_path / "bundle"
    ticks = json.loads((make_staging_directory(target) / STAGING_OWNER).read_text())["start_ticks"]
    if ticks is None:
        pytest.skip("no /proc/PID/stat on this system: process start times cannot be read")
    reused = _staging_with_owner(target, start_ticks=ticks + 1)  # our pid, but another process's start time
    rebooted = _staging_with_owner(target, boot_id="00000000-0000-0000-0000-000000000000")
    elsewhere = _staging_with_owner(target, host="another-host", pid=1)
    namespace = _staging_with_owner(target, pid_namespace="pid:[1]", pid=1)
    with subprocess.Popen([sys.executable, "-c", "pass"]) as finished:
        pass  # ended and reaped: its pid names no process now
    ended = _staging_with_owner(target, pid=finished.pid, start_ticks=0)
    removed = remove_stale_staging(target)
    assert sorted(r.path for r in removed) == sorted([reused, rebooted, ended])
    assert {r.pid for r in removed} == {os.getpid(), finished.pid}
    assert elsewhere.is_dir() and namespace.is_dir()
    assert remove_stale_staging(target) == []


# --- file-system failures: one line naming the path and the fix ---------------------------------------------------


def test_a_path_under_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "f").write_text("a file")
    result = ruclip_tiny("export", "--out", str(tmp_path / "f" / "sub"))
    assert result.returncode == 2
    line = error_line(result)
    assert f"{tmp_path / 'f'} is a file" in line and "choose another --out" in line


@pytest.mark.parametrize("out", ["/sys/ruclip-tiny-bundle", "/proc/ruclip-tiny-bundle"])
def test_a_directory_that_takes_no_new_entries_is_refused_in_one_line(out):
    if not Path(out).parent.is_dir():
        pytest.skip(f"{Path(out).parent} does not exist on this system")
    result = ruclip_tiny("export", "--out", out)
    assert result.returncode == 2
    line = error_line(result)
    assert f"cannot write {out}" in line and "choose" in line and "--out" in line
    assert not Path(out).exists()


def test_a_real_enospc_becomes_a_message_with_the_space_a_bundle_needs(tmp_path):
    if not Path("/dev/full").exists():
        pytest.skip("/dev/full (a device whose writes fail with ENOSPC) does not exist on this system")
    try:
        with open("/dev/full", "wb") as full:
            full.write(b"x")
    except OSError as exc:
        error = exc
    assert error.errno == errno.ENOSPC
    message = os_error_message(error, tmp_path / "bundle")
    assert message.startswith(f"no space left on the device holding {tmp_path / 'bundle'}")
    assert f"a bundle needs about {NEEDS}" in message and "MB are free there" in message
    assert "choose an --out on another disk" in message


@pytest.fixture
def small_disk(tmp_path):
    """A 20 MB tmpfs (root only): a disk too small for a bundle."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root and mount(8); ENOSPC is tested through /dev/full instead")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); ENOSPC is tested through /dev/full instead")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_ends_in_one_line_saying_how_much_a_bundle_needs(small_disk):
    out = small_disk / "bundle"
    result = ruclip_tiny("export", "--out", str(out), timeout=300)
    assert result.returncode == 2
    line = error_line(result)
    assert f"no space left on the device holding {out}" in line
    assert f"while writing {out / 'reference.safetensors'}" in line
    assert f"a bundle needs about {NEEDS}" in line and "on another disk" in line
    assert list(small_disk.iterdir()) == [], "the partial bundle is removed, freeing the disk again"


def test_the_space_estimate_covers_a_real_bundle_with_little_to_spare(exported_bundle):
    size = sum(p.stat().st_size for p in exported_bundle.rglob("*") if p.is_file())
    assert size <= BUNDLE_BYTES_ESTIMATE <= 1.1 * size


def test_non_finite_checkpoint_weights_stop_the_export_in_one_line(tmp_path, synthetic_state):
    import torch

    state = dict(synthetic_state)
    state["final_ln.weight"] = state["final_ln.weight"].clone()
    state["final_ln.weight"][3, 5] = float("nan")
    checkpoint = tmp_path / "diverged.pkl"
    torch.save(state, checkpoint)
    result = ruclip_tiny("export", "--out", str(tmp_path / "bundle"), "--checkpoint", str(checkpoint), timeout=300)
    assert result.returncode == 2
    line = error_line(result)
    assert str(checkpoint) in line and "final_ln.weight" in line and "1 NaN" in line
    assert not (tmp_path / "bundle").exists() and hidden_entries(tmp_path) == []
