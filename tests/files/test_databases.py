"""Database dumps end to end: a real PostgreSQL and a real MariaDB, started by the tests on
127.0.0.1 (``blockvault_demo.servers``), are filled, dumped with their own tools through
``backup --stdin-from-command`` / ``--stdin``, and the stored stream is restored into a
fresh, empty server of the same kind. The data is compared table by table as the servers
themselves print it (``COPY ... TO STDOUT``, ``SELECT ... ORDER BY``), so the oracle is
the database, not blockvault. SQLite's ``.backup`` recipe is checked the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from blockvault_demo.servers import Database, database, mariadb_missing, postgresql_bin
from tests.conftest import blockvault, need_tools, sh

STREAM = "shop.dump"

PG_FILL = """
CREATE TABLE customers (
    id integer PRIMARY KEY, name text NOT NULL, email text, created timestamptz, tags jsonb);
INSERT INTO customers
    SELECT i, 'Zoë Ångström-' || i || ' 東京 ☃ 😀', 'user' || i || '@example.org',
           timestamptz '2020-01-01 00:00:00+00' + i * interval '1 hour 7 seconds',
           jsonb_build_object('n', i, 'even', i % 2 = 0)
    FROM generate_series(1, 5000) AS i;
CREATE TABLE documents (
    id integer PRIMARY KEY, customer integer REFERENCES customers, title text, body text,
    data bytea);
INSERT INTO documents
    SELECT i, 1 + i % 5000, 'Dokument №' || i, repeat('Lorem ipsum ' || md5(i::text) || ' ', 20),
           (SELECT string_agg(decode(md5(i::text || '-' || j || random()::text), 'hex'), ''::bytea)
            FROM generate_series(1, 128) AS j)
    FROM generate_series(1, 2000) AS i;
CREATE INDEX documents_customer ON documents (customer);
CREATE SEQUENCE invoice_numbers START 1000;
SELECT nextval('invoice_numbers') FROM generate_series(1, 17);
CREATE VIEW big_customers AS SELECT customer, count(*) FROM documents GROUP BY customer;
"""
PG_TABLES = ("customers", "documents")

MARIADB_FILL = """
CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE shop;
CREATE TABLE customers (
    id INT PRIMARY KEY, name VARCHAR(200) NOT NULL, email VARCHAR(200), created DATETIME(6)
) ENGINE=InnoDB;
INSERT INTO customers
    SELECT seq, CONCAT('Zoë Ångström-', seq, ' 東京 ☃ 😀'), CONCAT('user', seq, '@example.org'),
           TIMESTAMP '2020-01-01 00:00:00' + INTERVAL seq * 3607 SECOND
    FROM seq_1_to_5000;
CREATE TABLE documents (
    id INT PRIMARY KEY, customer INT NOT NULL, title VARCHAR(200), body MEDIUMTEXT,
    data LONGBLOB, FOREIGN KEY (customer) REFERENCES customers (id)
) ENGINE=InnoDB;
INSERT INTO documents
    SELECT seq, 1 + seq % 5000, CONCAT('Dokument №', seq),
           REPEAT(CONCAT('Lorem ipsum ', MD5(seq), ' '), 20),
           CONCAT(RANDOM_BYTES(1024), RANDOM_BYTES(1024))
    FROM seq_1_to_2000;
CREATE VIEW big_customers AS SELECT customer, COUNT(*) AS n FROM documents GROUP BY customer;
"""
MARIADB_TABLES = ("customers", "documents")


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout


def new_repo(path: Path) -> Path:
    ok(blockvault("-r", path, "init"))
    return path


def snapshot_ids(repo: Path) -> list[str]:
    return [s["id"] for s in json.loads(ok(blockvault("-r", repo, "snapshots", "--json")))]


def stored_from_command(repo: Path, command: list[str]) -> str:
    """``backup --stdin-from-command`` of ``command``; the new snapshot's id."""
    done = blockvault(
        "-r",
        repo,
        "backup",
        "--stdin-from-command",
        shlex.join(command),
        "--name",
        STREAM,
        "--json",
    )
    return str(json.loads(ok(done))["id"])


def restored_stream(repo: Path, snapshot: str, name: str, target: Path) -> bytes:
    """The stream as ``restore SNAP DIR`` writes it: one file named after it."""
    ok(blockvault("-r", repo, "restore", snapshot, target))
    return (target / name).read_bytes()


def pg_digests(db: Database, dbname: str) -> dict[str, tuple[int, str]]:
    """Per table: bytes and SHA-256 of the rows as the server prints them, in key order."""
    out = {}
    for table in PG_TABLES:
        rows = db.run(
            "psql", "-d", dbname, "-c", f"COPY (SELECT * FROM {table} ORDER BY id) TO STDOUT"
        )
        out[table] = (len(rows), hashlib.sha256(rows).hexdigest())
    out["invoice_numbers"] = (
        0,
        db.run("psql", "-d", dbname, "-Atc", "SELECT last_value FROM invoice_numbers").decode(),
    )
    out["big_customers"] = (
        0,
        hashlib.sha256(
            db.run("psql", "-d", dbname, "-Atc", "SELECT * FROM big_customers ORDER BY 1")
        ).hexdigest(),
    )
    return out  # fmt: skip


def mariadb_digests(db: Database) -> dict[str, tuple[int, str]]:
    out = {}
    for table in MARIADB_TABLES:
        rows = db.run(
            "mariadb", "--default-character-set=utf8mb4", "--batch", "--raw",
            "--skip-column-names", "-e", f"SELECT * FROM shop.{table} ORDER BY id",
        )  # fmt: skip
        out[table] = (len(rows), hashlib.sha256(rows).hexdigest())
    view = db.run("mariadb", "--batch", "-e", "SELECT * FROM shop.big_customers ORDER BY 1")
    out["big_customers"] = (0, hashlib.sha256(view).hexdigest())
    return out


@pytest.fixture(scope="module")
def postgresql() -> Iterator[Database]:
    if postgresql_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with database("postgresql") as db:
        db.run("createdb", "shop")
        db.run("psql", "-v", "ON_ERROR_STOP=1", "-q", "-d", "shop", input=PG_FILL.encode())
        yield db


@pytest.fixture(scope="module")
def mariadb() -> Iterator[Database]:
    missing = mariadb_missing()
    if missing:
        pytest.skip(missing)
    with database("mariadb") as db:
        db.run("mariadb", "--default-character-set=utf8mb4", input=MARIADB_FILL.encode())
        yield db


def test_a_postgresql_dump_restores_into_a_fresh_server(
    postgresql: Database, tmp_path: Path
) -> None:
    repo = new_repo(tmp_path / "repo")
    made = stored_from_command(repo, postgresql.tool("pg_dump", "-Fc", "-d", "shop"))
    stream = restored_stream(repo, made, STREAM, tmp_path / "out")
    assert stream.startswith(b"PGDMP")  # pg_dump's custom format, whole
    before = pg_digests(postgresql, "shop")
    assert before["documents"][0] > 4_000_000  # the blobs really went through

    with database("postgresql") as fresh:
        fresh.run("createdb", "shop")
        fresh.run("pg_restore", "--exit-on-error", "-d", "shop", input=stream)
        assert pg_digests(fresh, "shop") == before


def test_a_mariadb_dump_piped_to_stdin_restores_into_a_fresh_server(
    mariadb: Database, tmp_path: Path
) -> None:
    """The ``--stdin`` form, into an encrypted repository: ``mariadb-dump | blockvault``."""
    repo = tmp_path / "repo"
    secret = {"BLOCKVAULT_PASSWORD": "correct horse battery staple"}
    ok(blockvault("-r", repo, "init", "--encryption", "repokey", env=secret))
    dump = mariadb.tool(
        "mariadb-dump", "--default-character-set=utf8mb4", "--single-transaction",
        "--routines", "--triggers", "--hex-blob", "--databases", "shop",
    )  # fmt: skip
    with subprocess.Popen(dump, stdout=subprocess.PIPE) as dumper:
        stored = subprocess.run(
            ["blockvault", "-r", str(repo), "backup", "--stdin", "--name", STREAM, "--json"],
            stdin=dumper.stdout,
            capture_output=True,
            text=True,
            env={**os.environ, **secret},
            check=False,
        )
    assert dumper.returncode == 0
    made = json.loads(ok(stored))
    ok(blockvault("-r", repo, "restore", made["id"], tmp_path / "out", env=secret))
    stream = (tmp_path / "out" / STREAM).read_bytes()
    assert b"CREATE TABLE `documents`" in stream
    before = mariadb_digests(mariadb)
    assert before["documents"][0] > 4_000_000

    with database("mariadb") as fresh:
        fresh.run("mariadb", "--default-character-set=utf8mb4", input=stream)
        assert mariadb_digests(fresh) == before


def test_a_mariadb_dump_by_command_is_the_same_stream_again(
    mariadb: Database, tmp_path: Path
) -> None:
    """``--stdin-from-command`` with MariaDB's tool, and ``cat`` of the stream: a second
    dump of unchanged data adds almost nothing to the repository."""
    repo = new_repo(tmp_path / "repo")
    dump = mariadb.tool(
        "mariadb-dump", "--skip-dump-date", "--single-transaction", "--databases", "shop"
    )
    first = stored_from_command(repo, dump)
    second = stored_from_command(repo, dump)
    shown = subprocess.run(
        ["blockvault", "-r", str(repo), "cat", f"{second}:/{STREAM}"],
        capture_output=True,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == subprocess.run(dump, capture_output=True, check=True).stdout
    listed = {s["id"]: s for s in json.loads(ok(blockvault("-r", repo, "snapshots", "--json")))}
    assert listed[second]["source"] == f"stdin: {STREAM}"
    stored = [listed[i]["stats"]["stored_bytes"] for i in (first, second)]
    assert stored[1] < stored[0] // 10


def test_a_failing_dump_stores_nothing(postgresql: Database, tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    missing = shlex.join(postgresql.tool("pg_dump", "-Fc", "-d", "no_such_database"))
    failed = blockvault("-r", repo, "backup", "--stdin-from-command", missing, "--name", STREAM)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1, failed.stderr
    assert "no_such_database" in failed.stderr  # the dump's own last line says why
    # Output first, failure after: what was read so far is not committed either.
    pg_dump = shlex.join(postgresql.tool("pg_dump", "-Fc", "-d", "shop"))
    half = shlex.join(["sh", "-c", f"{pg_dump}; exit 3"])
    failed = blockvault("-r", repo, "backup", "--stdin-from-command", half, "--name", STREAM)
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    assert snapshot_ids(repo) == []
    ok(blockvault("-r", repo, "check"))


def test_the_sqlite_backup_recipe(tmp_path: Path) -> None:
    """``sqlite3 app.db ".backup staging/app.db"``, then a file backup of the staging
    directory: the restored copy passes integrity_check and dumps the same SQL."""
    need_tools("sqlite3")
    live = tmp_path / "app.db"
    sh(
        "sqlite3",
        live,
        """PRAGMA journal_mode=WAL;
        CREATE TABLE notes (id INTEGER PRIMARY KEY, title TEXT, body TEXT, data BLOB);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
        INSERT INTO notes SELECT i, 'Notiz №' || i || ' ☃ 東京', hex(randomblob(200)),
                                 randomblob(1024) FROM n;
        CREATE INDEX notes_title ON notes (title);""",
    )
    staging = tmp_path / "staging"
    staging.mkdir()
    sh("sqlite3", live, f".backup '{staging / 'app.db'}'")
    repo = new_repo(tmp_path / "repo")
    made = json.loads(ok(blockvault("-r", repo, "backup", staging, "--json")))
    out = tmp_path / "out"
    ok(blockvault("-r", repo, "restore", made["id"], out))
    restored = next(out.rglob("app.db"))
    assert sh("sqlite3", restored, "PRAGMA integrity_check;").strip() == "ok"
    assert sh("sqlite3", restored, ".dump") == sh("sqlite3", live, ".dump")
    assert int(sh("sqlite3", restored, "SELECT count(*) FROM notes;")) == 3000
