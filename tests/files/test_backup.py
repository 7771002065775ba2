"""File backup end to end: real trees in temporary directories, backed up with the CLI
(or the library, where a deterministic hook is needed), read back through the trees
and compared with what ``os`` says is on disk."""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import subprocess
import tempfile
import traceback
import tracemalloc
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from blockvault.files import backup as files_backup
from blockvault.files import chunker
from blockvault.files.backup import PACK_TARGET, SMALL_FILE, backup_files
from blockvault.repo import Repository
from blockvault_demo.servers import S3Server
from tests.conftest import blockvault, kill_when_stopped, needs_root, sh
from tests.files.trees import content, in_snapshot, nodes, on_disk


def ok(*args: str | os.PathLike[str], **kw: str) -> str:
    proc = blockvault(*args, **kw)  # type: ignore[arg-type]
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    location = tmp_path / "repo"
    ok("-r", location, "init", "--encryption", "none")
    return location


def snapshot_json(repo: Path, ref: str) -> dict:  # type: ignore[type-arg]
    return json.loads(ok("-r", repo, "info", ref, "--json"))["snapshot"]  # type: ignore[no-any-return]


def make_tree(root: Path, rng: random.Random) -> None:
    """Every kind of entry a backup must keep, hostile names included."""
    (root / "docs" / "deep" / "er").mkdir(parents=True)
    (root / "empty").mkdir()
    for i in range(300):  # small files: packed, not one object each
        (root / "docs" / f"note{i:03}.txt").write_bytes(rng.randbytes(rng.randrange(1, 3000)))
    (root / "docs" / "same1").write_bytes(b"identical small content\n" * 50)
    (root / "docs" / "same2").write_bytes(b"identical small content\n" * 50)
    (root / "docs" / "deep" / "er" / "big.bin").write_bytes(rng.randbytes(20 << 20))
    (root / "docs" / "empty.txt").write_bytes(b"")
    (root / "mid.bin").write_bytes(rng.randbytes(SMALL_FILE + 1))
    sparse = root / "sparse.img"
    with open(sparse, "wb") as f:
        f.truncate(64 << 20)
        f.seek(20 << 20)
        f.write(rng.randbytes(1 << 20))
    (root / "hard1").write_bytes(b"linked twice")
    os.link(root / "hard1", root / "docs" / "hard2")
    os.symlink("../mid.bin", root / "docs" / "link")
    os.symlink("/nonexistent/absolute", root / "dangling")
    os.mkfifo(root / "fifo")
    os.chmod(root / "docs" / "note000.txt", 0o4751)
    os.utime(root / "docs" / "note001.txt", ns=(1, 1_234_567_891_123_456_789))
    for raw in (b"caf\xe9-latin1", b"new\nline", b"esc\x1b[2J", b"-dash", b" space "):
        with open(os.path.join(os.fsencode(root), raw), "wb") as f:
            f.write(raw)
    os.mkdir(os.path.join(os.fsencode(root), b"dir\xff"))
    with open(os.path.join(os.fsencode(root), b"dir\xff", b"inner"), "wb") as f:
        f.write(b"inside a non-UTF-8 directory")


def test_tree_round_trip(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, random.Random(1))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sock"))
    try:
        proc = blockvault("-r", repo, "backup", src)
    finally:
        sock.close()
    assert proc.returncode == 0, proc.stderr
    assert "a socket, skipped" in proc.stderr
    assert in_snapshot(repo, "latest", src) == on_disk(src)

    found = nodes(repo, "latest", src)
    assert b"sock" not in found
    sparse = found[b"sparse.img"]
    holes = [s.chunk_id is None for s in sparse.content]
    assert holes[0] and holes[-1] and not any(holes[1:-1])  # hole, data chunks, hole
    assert sum(s.length for s in sparse.content if s.chunk_id) == 1 << 20
    small = [n for p, n in found.items() if p.startswith(b"docs/note")]
    packs = {s.chunk_id for n in small for s in n.content}
    total = sum(n.size for n in small)
    assert len(packs) <= total // PACK_TARGET + 1  # about 450 KB: one pack, not 300 objects
    assert found[b"docs/same1"].content == found[b"docs/same2"].content
    big = found[b"docs/deep/er/big.bin"].content
    assert all(chunker.MINIMUM <= s.length <= chunker.MAXIMUM for s in big[:-1])
    snap = snapshot_json(repo, "latest")
    assert snap["kind"] == "files" and snap["paths"] == [str(src)]
    assert snap["stats"]["files"] == sum(1 for n in found.values() if n.kind == "file")
    assert "no problems" in blockvault("-r", repo, "check", "--read-data").stdout


def test_incremental_reads_nothing_unchanged(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(2)
    make_tree(src, rng)
    first = backup_files(Repository.open(str(repo)), [str(src)])
    assert first.stats.read_bytes > 20 << 20  # the sparse file's holes are not read

    # the oracle: what the process read through the kernel, whatever our stats say
    before = _rchar()
    second = backup_files(Repository.open(str(repo)), [str(src)])
    read = _rchar() - before
    assert second.parent == first.id
    assert second.stats.read_bytes == 0
    # the tree of src is the same object (the directories above it, such as /tmp, may
    # have changed meanwhile: other processes use them): at most those are stored anew
    assert _subtree(repo, second.id, src) == _subtree(repo, first.id, src)
    assert second.stats.stored_bytes < 8192
    # the bytes in use are the same tree's (a hard-linked inode counts once, as du does)
    assert first.stats.used_bytes == second.stats.used_bytes == _du(src)
    assert read < 2 << 20  # the parent's trees and the repository's small files only

    (src / "mid.bin").write_bytes(rng.randbytes(SMALL_FILE + 7))  # changed
    (src / "docs" / "new.txt").write_bytes(b"added")
    (src / "docs" / "note005.txt").unlink()
    before = _rchar()
    third = backup_files(Repository.open(str(repo)), [str(src)])
    read = _rchar() - before
    assert third.parent == second.id
    assert third.stats.read_bytes == SMALL_FILE + 7 + len(b"added")
    assert read < 3 << 20
    assert in_snapshot(repo, third.id, src) == on_disk(src)


def _du(root: Path) -> int:
    """The apparent size of the regular files under ``root``, each inode once."""
    sizes = {}
    for top, _dirs, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(top, name))
            if stat.S_ISREG(st.st_mode):
                sizes[st.st_dev, st.st_ino] = st.st_size
    return sum(sizes.values())


def _subtree(repo: Path, snap_id: str, path: Path) -> str:
    parent = nodes(repo, snap_id, path.parent)
    return parent[path.name.encode()].subtree


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


def test_selection_options(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    for d in ("keep", "build/obj", "Cache", "cachedir", "marked", "node_modules/x"):
        (src / d).mkdir(parents=True)
    for f in ("keep/a.c", "keep/a.o", "build/obj/b.c", "keep/UPPER.TMP", "keep/big", "keep/x.log"):
        (src / f).write_bytes(b"x" * (2000 if f.endswith("big") else 10))
    (src / "cachedir" / "CACHEDIR.TAG").write_bytes(
        b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n"
    )
    (src / "Cache" / "CACHEDIR.TAG").write_bytes(b"not the signature")
    (src / "marked" / ".nobackup").write_bytes(b"")
    (src / "node_modules" / "x" / "m.js").write_bytes(b"js")
    patterns = tmp_path / "patterns"
    patterns.write_text("# comment\n\n*.log\n")
    ok(
        "-r", repo, "backup", src,
        "--exclude", "*.o", "--exclude", f"{src}/build", "--exclude", "node_modules/",
        "--exclude-file", patterns, "--iexclude", "*.tmp", "--exclude-caches",
        "--exclude-if-present", ".nobackup", "--exclude-larger-than", "1KiB",
    )  # fmt: skip
    kept = sorted(nodes(repo, "latest", src))
    assert kept == [
        b"Cache", b"Cache/CACHEDIR.TAG", b"keep", b"keep/a.c",
    ]  # fmt: skip
    bad = blockvault("-r", repo, "backup", src, "--exclude-file", tmp_path / "missing")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "exclude file" in bad.stderr


@needs_root
def test_one_file_system_keeps_mount_points_empty(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    (src / "mnt").mkdir(parents=True)
    (src / "here").write_bytes(b"on the same filesystem")
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "blockvault-test", src / "mnt")
    try:
        (src / "mnt" / "elsewhere").write_bytes(b"on another filesystem")
        ok("-r", repo, "backup", "--one-file-system", src)
        ok("-r", repo, "backup", src, "--host", "all")
    finally:
        sh("umount", src / "mnt")
    one = Repository.open(str(repo)).listing().usable()
    by_host = {s.host: s.id for s in one}
    assert sorted(nodes(repo, by_host["all"], src)) == [b"here", b"mnt", b"mnt/elsewhere"]
    other = next(h for h in by_host if h != "all")
    assert sorted(nodes(repo, by_host[other], src)) == [b"here", b"mnt"]


def test_several_paths_in_one_snapshot(tmp_path: Path, repo: Path) -> None:
    for d in ("a", "a/inner", "b"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
        (tmp_path / d / "f").write_bytes(d.encode())
    snap_id = ok("-r", repo, "backup", tmp_path / "b", tmp_path / "a", tmp_path / "a" / "inner")
    snap = snapshot_json(repo, snap_id)
    assert snap["paths"] == sorted(
        [str(tmp_path / "a"), str(tmp_path / "a" / "inner"), str(tmp_path / "b")]
    )
    assert sorted(nodes(repo, snap_id, tmp_path)) == [
        b"a", b"a/f", b"a/inner", b"a/inner/f", b"b", b"b/f",
    ]  # fmt: skip
    missing = blockvault("-r", repo, "backup", tmp_path / "a", tmp_path / "nothing")
    assert missing.returncode == 2 and "nothing" in missing.stderr
    assert missing.stderr.count("\n") == 1


def test_changed_while_read_is_a_warning(
    tmp_path: Path, repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    growing = src / "growing.log"
    growing.write_bytes(random.Random(3).randbytes(3 << 20))
    (src / "steady").write_bytes(b"steady")
    real_cut = chunker.cut

    def cut_and_append(fd: int, start: int, length: int):  # type: ignore[no-untyped-def]
        for n, piece in enumerate(real_cut(fd, start, length)):
            if n == 0:  # deterministic: the writer strikes after the first chunk is read
                with open(growing, "ab") as f:
                    f.write(b"appended while read")
            yield piece

    monkeypatch.setattr(files_backup.chunker, "cut", cut_and_append)
    snap = backup_files(Repository.open(str(repo)), [str(src)])
    assert snap.warning_count == 1
    assert str(growing) in snap.warnings[0] and "changed while it was read" in snap.warnings[0]
    assert nodes(repo, snap.id, src)[b"steady"].size == 6
    info = ok("-r", repo, "info", snap.id)
    assert "1 warning" in info and "changed while it was read" in info


@needs_root
def test_unreadable_entries_are_warnings() -> None:
    """Backed up as nobody (a forked child, so no interpreter needs to be readable):
    a file and a directory it may not read are warnings; the backup completes."""
    top = Path(tempfile.mkdtemp(prefix="blockvault-nobody-"))  # /tmp/pytest-of-root is 0700
    try:
        os.chmod(top, 0o755)
        repo = top / "repo"
        ok("-r", repo, "init", "--encryption", "none")
        sh("chmod", "-R", "a+rwX", repo)
        src = top / "src"
        (src / "closed").mkdir(parents=True)
        (src / "open").write_bytes(b"readable")
        (src / "secret").write_bytes(b"not for nobody")
        (src / "closed" / "inside").write_bytes(b"hidden")
        os.chmod(src / "secret", 0o600)
        os.chmod(src / "closed", 0o700)
        opened = Repository.open(str(repo))
        pid = os.fork()
        if pid == 0:  # the child: nobody, backs up, exits with 0 if it committed
            code = 1
            try:
                os.setgroups([])
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                backup_files(opened, [str(src)])
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        snap = snapshot_json(repo, "latest")
        assert snap["warning_count"] == 2, snap["warnings"]
        assert any("secret" in w and "Permission denied" in w for w in snap["warnings"])
        assert any("closed" in w and "cannot be listed" in w for w in snap["warnings"])
        assert sorted(nodes(repo, "latest", src)) == [b"closed", b"open"]
    finally:
        shutil.rmtree(top)


def test_two_hosts_share_chunks(tmp_path: Path, repo: Path) -> None:
    one, two = tmp_path / "pc1", tmp_path / "pc2"
    one.mkdir()
    make_tree(one, random.Random(4))
    sh("cp", "-a", one, two)  # the same data on another machine: other inodes, same bytes
    first = json.loads(ok("-r", repo, "backup", one, "--host", "pc1", "--json"))
    second = json.loads(ok("-r", repo, "backup", two, "--host", "pc2", "--json"))
    assert second["parent"] == ""  # another origin: no parent
    data = first["stats"]["stored_bytes"]
    # only the trees are new (they hold inodes and times); every chunk and pack is shared
    assert second["stats"]["stored_bytes"] < data / 100
    repo_obj = Repository.open(str(repo))
    a = nodes(repo, first["id"], one)
    b = nodes(repo, second["id"], two)
    assert all(a[p].content == b[p].content for p in a if a[p].kind == "file")
    assert {s.host for s in repo_obj.listing().usable()} == {"pc1", "pc2"}


def test_stdin_and_command(tmp_path: Path, repo: Path) -> None:
    data = random.Random(5).randbytes(3 << 20)
    dump = tmp_path / "dump"
    dump.write_bytes(data)
    with open(dump, "rb") as stdin:
        proc = subprocess.run(
            ["blockvault", "-r", str(repo), "backup", "--stdin", "--name", "db.dump"],
            stdin=stdin, capture_output=True, text=True, check=False,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    snap = snapshot_json(repo, proc.stdout.strip())
    assert snap["source"] == "stdin: db.dump" and snap["source_id"] == "stdin:db.dump"
    found = nodes(repo, snap["id"], Path("/"))
    assert list(found) == [b"db.dump"]
    assert content(Repository.open(str(repo)), found[b"db.dump"]) == data

    cmd_id = ok("-r", repo, "backup", "--stdin-from-command", f"cat {dump}", "--name", "db.dump")
    again = snapshot_json(repo, cmd_id)
    assert again["parent"] == snap["id"] and again["stats"]["stored_bytes"] < 4096

    before = sorted(os.listdir(repo / "snapshots"))
    failed = blockvault(
        "-r", repo, "backup", "--stdin-from-command",
        f"sh -c 'cat {dump}; echo connection refused >&2; exit 3'", "--name", "db.dump",
    )  # fmt: skip
    assert failed.returncode != 0
    assert (
        failed.stderr.strip().splitlines() == [failed.stderr.strip()]
        and "status 3" in failed.stderr
        and "connection refused" in failed.stderr
    )
    assert sorted(os.listdir(repo / "snapshots")) == before


def test_kill_9_mid_backup_leaves_a_consistent_repository(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(6)
    for i in range(12):
        (src / f"big{i}").write_bytes(rng.randbytes(2 << 20))
    command = ["blockvault", "-r", str(repo), "backup", str(src)]
    assert kill_when_stopped(command, "signal=STOP,every=5,operations=write,under=data/")
    assert not (repo / "snapshots").exists() or not os.listdir(repo / "snapshots")
    check = blockvault("-r", repo, "check")
    assert check.returncode == 0 and "no problems" in check.stdout, check.stdout + check.stderr
    ok("-r", repo, "unlock")
    ok("-r", repo, "backup", src)
    assert in_snapshot(repo, "latest", src) == on_disk(src)
    assert "no problems" in ok("-r", repo, "check", "--read-data")


def test_gc_keeps_file_snapshots_and_frees_pruned_ones(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(random.Random(7).randbytes(2 << 20))
    ok("-r", repo, "backup", src)
    (src / "a").write_bytes(random.Random(8).randbytes(2 << 20))
    ok("-r", repo, "backup", src)
    ok("-r", repo, "gc", "--margin", "0")
    assert "no problems" in ok("-r", repo, "check", "--read-data")
    ok("-r", repo, "prune", "--keep-last", "1")
    ok("-r", repo, "gc", "--margin", "0")
    assert in_snapshot(repo, "latest", src) == on_disk(src)
    assert "no problems" in ok("-r", repo, "check", "--read-data")
    stored = sum(f.stat().st_size for f in (repo / "data").rglob("*") if f.is_file())
    assert stored < 3 << 20  # the first version's chunks are gone


def test_check_finds_a_missing_tree_object(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "f").write_bytes(b"x")
    snap_id = ok("-r", repo, "backup", src)
    sub = nodes(repo, snap_id, src)[b"sub"].subtree
    (repo / "data" / sub[:2] / sub).unlink()
    check = blockvault("-r", repo, "check")
    assert check.returncode == 4
    assert sub in check.stdout + check.stderr
    verify = blockvault("-r", repo, "verify", snap_id)
    assert verify.returncode == 4


def test_chunker_vector_is_frozen() -> None:
    """The cut points decide dedup forever: these are the first boundaries of a fixed
    pseudo-random input (docs/FORMAT.md); a change here breaks every repository's dedup."""
    data = random.Random(20261203).randbytes(24 << 20)
    read = iter([data[i : i + (3 << 20)] for i in range(0, len(data), 3 << 20)] + [b""])
    lengths = [len(p) for p in chunker.cut_stream(lambda n: next(read))]
    assert sum(lengths) == len(data)
    assert lengths == FROZEN_LENGTHS


FROZEN_LENGTHS = [
    932352, 1588945, 1066135, 1100879, 1876558, 2858841, 1294391, 1385018, 1387345,
    1447057, 1175625, 625380, 2868367, 1853832, 618575, 2612481, 474043,
]  # fmt: skip


def test_refusals_are_one_line(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"not a disk")
    snap_id = ok("-r", repo, "backup", src)
    for args in (
        ["backup", "--stdin"],
        ["backup", "--stdin", "--name", "a/b"],
        ["backup", src, "--exclude-larger-than", "lots"],
        ["verify", snap_id, "--against", src / "file"],
    ):
        proc = blockvault("-r", repo, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1, (args, proc.stderr)


@needs_root
def test_linux_metadata_on_ext4(
    tmp_path: Path, repo: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    """On a real ext4 (mkfs.ext4, loop device): POSIX ACLs, a file capability, user
    xattrs, device nodes, owners without names and setuid bits all arrive in the trees."""
    image = tmp_path / "fs.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    sh("mkfs.ext4", "-q", "-F", image)
    root = mounted(loop(image), tmp_path / "mnt")
    (root / "shared").mkdir()
    (root / "shared" / "doc").write_bytes(b"acl'd")
    sh("setfacl", "-m", "u:1234:rwx,g:4321:r", root / "shared" / "doc")
    sh("setfacl", "-d", "-m", "u:1234:rx", root / "shared")
    (root / "ping").write_bytes(b"\x7fELF pretend")
    sh("setcap", "cap_net_raw+ep", root / "ping")
    os.setxattr(root / "shared" / "doc", "user.comment", b"\x00binary\xff value")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "loop9", 0o660 | stat.S_IFBLK, os.makedev(7, 9))
    os.chown(root / "shared" / "doc", 54321, 65432)
    os.chmod(root / "ping", 0o4755)
    ok("-r", repo, "backup", root)
    assert in_snapshot(repo, "latest", root) == on_disk(root)
    found = nodes(repo, "latest", root)
    doc = dict(found[b"shared/doc"].xattrs)
    assert {"system.posix_acl_access", "user.comment"} <= set(doc)
    assert "system.posix_acl_default" in dict(found[b"shared"].xattrs)
    assert "security.capability" in dict(found[b"ping"].xattrs)
    assert found[b"ping"].mode == 0o4755
    assert (found[b"null"].kind, found[b"null"].rdev) == ("chardev", os.makedev(1, 3))
    assert (found[b"loop9"].kind, found[b"loop9"].rdev) == ("blockdev", os.makedev(7, 9))
    assert (found[b"shared/doc"].uid, found[b"shared/doc"].user) == (54321, "")


def test_disk_only_commands_refuse_file_snapshots(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "file").write_bytes(b"a file, not a disk")
    snap = ok("-r", repo, "backup", src)[:12]
    # (restore takes a file snapshot into a directory: tests/files/test_restore.py)
    for args in (
        ["cast", "send", snap],
        ["boot", snap],
        ["export", snap, tmp_path / "disk.qcow2"],
        ["export", snap, tmp_path / "cz", "--format", "clonezilla"],
    ):
        proc = blockvault("-r", repo, *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "holds files, not a disk image" in proc.stderr
    assert not (tmp_path / "disk.img").exists() and not (tmp_path / "disk.qcow2").exists()
    # a one-file image carries a file snapshot whole: imported, it checks clean
    ok("-r", repo, "export", snap, tmp_path / "files.bvi")
    other = tmp_path / "other"
    ok("-r", other, "init", "--encryption", "none")
    ok("-r", other, "import", tmp_path / "files.bvi")
    assert in_snapshot(other, "latest", src) == on_disk(src)
    assert "no problems" in ok("-r", other, "check", "--read-data")


def test_import_into_an_encrypted_repository_rebuilds_the_trees(tmp_path: Path, repo: Path) -> None:
    """Other ids (keyed BLAKE3): every chunk re-identified, every tree rewritten to name
    the new ids; the files read back the same and the copy checks clean."""
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, random.Random(9))
    snap = ok("-r", repo, "backup", src)[:12]
    ok("-r", repo, "export", snap, tmp_path / "files.bvi")
    secret = tmp_path / "secret"
    env = {"BLOCKVAULT_PASSWORD": "correct horse"}
    ok("-r", secret, "init", "--encryption", "repokey", env=env)
    ok("-r", secret, "import", tmp_path / "files.bvi", env=env)
    ok("-r", secret, "import", tmp_path / "files.bvi", env=env)  # again: all deduplicated
    assert "no problems" in ok("-r", secret, "check", "--read-data", env=env)
    snaps = Repository.open(str(secret), passphrase="correct horse").listing().usable()
    assert snaps[0].tree == snaps[1].tree != Repository.open(str(repo)).resolve(snap).tree
    assert in_snapshot(secret, snaps[1].id, src, "correct horse") == on_disk(src)


@needs_root
def test_snapshot_reads_from_a_btrfs_snapshot(
    tmp_path: Path, repo: Path, loop: Callable[..., str], mounted: Callable[..., Path]
) -> None:
    image = tmp_path / "btrfs.img"
    with open(image, "wb") as f:
        f.truncate(200 << 20)
    sh("mkfs.btrfs", "-q", image)
    top = mounted(loop(image), tmp_path / "mnt")
    sh("btrfs", "subvolume", "create", top / "home")
    (top / "home" / "ann").mkdir()
    (top / "home" / "ann" / "thesis.tex").write_bytes(b"\\documentclass{article}")
    (top / "home" / "ann" / "skip.o").write_bytes(b"object")
    (top / "outside").write_bytes(b"in the top-level subvolume")
    snap_id = ok("-r", repo, "backup", "--snapshot", top / "home" / "ann", top / "outside",
                 "--exclude", f"{top}/home/ann/*.o")  # fmt: skip
    snap = snapshot_json(repo, snap_id)
    assert snap["paths"] == [str(top / "home" / "ann"), str(top / "outside")]
    found = nodes(repo, snap_id, top)
    assert sorted(found) == [b"home", b"home/ann", b"home/ann/thesis.tex", b"outside"]
    expected = on_disk(top / "home" / "ann")
    del expected[b"skip.o"]
    assert in_snapshot(repo, snap_id, top / "home" / "ann") == expected
    left = sh("btrfs", "subvolume", "list", top)
    assert ".blockvault-snapshot-" not in left  # deleted afterwards
    assert ".blockvault-snapshot-" not in " ".join(os.listdir(top)) + " ".join(
        os.listdir(top / "home")
    )


def test_snapshot_elsewhere_is_refused(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    proc = blockvault("-r", repo, "backup", "--snapshot", src)
    if "btrfs" in sh("stat", "-f", "-c", "%T", src):
        pytest.skip("the temporary directory is on btrfs")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "not btrfs" in proc.stderr and "--live" in proc.stderr


def test_a_very_deep_tree(tmp_path: Path, repo: Path) -> None:
    """Deeper than a reader accepts (MAX_TREE_DEPTH): no recursion error, the excess
    kept empty with a warning; the snapshot checks clean and imports under other ids."""
    try:
        _deep_tree(tmp_path, repo)
    finally:  # rm copes with any depth; pytest's cleanup (shutil.rmtree) recurses
        sh("rm", "-rf", tmp_path / "src")


def _deep_tree(tmp_path: Path, repo: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)
    os.mkdir("src", dir_fd=fd)
    for _ in range(1100):  # by descriptor: the full path would pass PATH_MAX
        inner = os.open("src" if _ == 0 else "d", os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
        os.mkdir("d", dir_fd=fd)
    os.close(fd)
    snap = json.loads(ok("-r", repo, "backup", tmp_path / "src", "--json"))
    assert snap["warning_count"] == 1 and "nested deeper than" in snap["warnings"][0]
    assert "no problems" in ok("-r", repo, "check", "--read-data")
    ok("-r", repo, "export", snap["id"][:12], tmp_path / "deep.bvi")
    secret = tmp_path / "secret"
    env = {"BLOCKVAULT_PASSWORD": "pw"}
    ok("-r", secret, "init", "--encryption", "repokey", env=env)
    ok("-r", secret, "import", tmp_path / "deep.bvi", env=env)
    assert "no problems" in ok("-r", secret, "check", "--read-data", env=env)


def test_prune_keeps_per_origin(tmp_path: Path, repo: Path) -> None:
    """Retention counts each origin (host and paths) apart, for file snapshots too."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    for n in range(3):
        for name in ("a", "b"):
            (tmp_path / name / "f").write_bytes(f"{name}{n}".encode())
            ok("-r", repo, "backup", tmp_path / name, "--tag", "daily")
    ok("-r", repo, "prune", "--keep-last", "1")
    kept = Repository.open(str(repo)).listing().usable()
    assert sorted(s.paths for s in kept) == [(str(tmp_path / "a"),), (str(tmp_path / "b"),)]
    assert all(s.tags == ("daily",) for s in kept)
    for name in ("a", "b"):
        snap = next(s for s in kept if s.paths == (str(tmp_path / name),))
        assert in_snapshot(repo, snap.id, tmp_path / name) == on_disk(tmp_path / name)


def test_file_backup_into_an_encrypted_s3_repository(
    tmp_path: Path, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote storage and encryption work for file snapshots unchanged."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BLOCKVAULT_PASSWORD", "s3 secret")
    repo = f"s3://bv-{uuid.uuid4().hex[:10]}/files"
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, random.Random(10))
    ok("-r", repo, "init", "--encryption", "repokey")
    first = json.loads(ok("-r", repo, "backup", src, "--json"))
    second = json.loads(ok("-r", repo, "backup", src, "--json"))
    assert second["parent"] == first["id"] and second["stats"]["read_bytes"] == 0
    assert in_snapshot(repo, second["id"], src, "s3 secret") == on_disk(src)
    assert "no problems" in ok("-r", repo, "check", "--read-data")


def test_ctrl_c_says_what_it_left(tmp_path: Path, repo: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(11)
    for i in range(8):
        (src / f"big{i}").write_bytes(rng.randbytes(2 << 20))
    faults = {"BLOCKVAULT_FAULTS": "signal=INT,every=4,operations=write,under=data/"}
    proc = blockvault("-r", repo, "backup", src, env=faults)
    assert proc.returncode == 130, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "no snapshot was written" in last and "reused by the next backup" in last
    assert "no problems" in ok("-r", repo, "check")
    ok("-r", repo, "backup", src)
    assert in_snapshot(repo, "latest", src) == on_disk(src)


def test_backing_up_the_root_directory(repo: Path) -> None:
    """``/`` itself: the root tree is its tree (here narrowed by patterns to /etc)."""
    snap = ok("-r", repo, "backup", "/", "--one-file-system", "--exclude", "/*",
              "--exclude", "!/etc")  # fmt: skip
    top = Repository.open(str(repo)).resolve(snap)
    assert top.paths == ("/",)
    found = nodes(repo, snap, Path("/"))
    assert {p.split(b"/")[0] for p in found} == {b"etc"}
    assert found[b"etc/passwd"].size == os.lstat("/etc/passwd").st_size


def test_unchanged_walk_memory_follows_depth_not_file_count(tmp_path: Path) -> None:
    """Six times the files (in six times the directories, same depth) cost no more
    memory in an unchanged backup: each directory's parent tree is let go once stored."""
    peaks = []
    for dirs in (10, 60):
        src = tmp_path / f"src{dirs}"
        for d in range(dirs):
            (src / f"d{d:03}").mkdir(parents=True)
            for i in range(300):
                (src / f"d{d:03}" / f"f{i:03}").touch()
        location = tmp_path / f"repo{dirs}"
        ok("-r", location, "init", "--encryption", "none")
        backup_files(Repository.open(str(location)), [str(src)])
        tracemalloc.start()
        try:
            second = backup_files(Repository.open(str(location)), [str(src)])
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert second.stats.files == dirs * 300 and second.stats.read_bytes == 0
    assert peaks[1] < peaks[0] + (2 << 20), peaks  # held, 15,000 more nodes: over 3 MB
