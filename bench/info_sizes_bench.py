#!/usr/bin/env python3
"""How ``info`` learns what a snapshot's chunks take in storage: one size request per
chunk (before) against one listing with sizes (``Backend.list_sizes``, after).

Writes ``--chunks`` small chunk objects into a fresh repository on a local directory
and on a local moto S3 server (``blockvault_demo.servers``), then times both ways of
summing their sizes and checks that they agree. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import secrets
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blockvault.errors import ObjectNotFound
from blockvault.repo import Repository
from blockvault.repo import format as fmt
from blockvault_demo.servers import start_moto, stop


def one_request_each(repo: Repository, chunk_ids: set[str]) -> int:
    """The way ``info`` asked before: ``size`` of each chunk, one round trip each."""
    total = 0
    for chunk_id in chunk_ids:
        try:
            total += repo.backend.size(fmt.chunk_name(chunk_id))
        except ObjectNotFound:
            continue
    return total


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def measure(location: str, count: int) -> tuple[float, float]:
    repo = Repository.init(location, encryption="none")
    ids = {secrets.token_hex(32) for _ in range(count)}
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: repo.backend.write(fmt.chunk_name(i), os.urandom(64)), ids))
    before, expected = timed(lambda: one_request_each(repo, ids))
    after, total = timed(lambda: repo.stored_size(ids))
    assert total == expected == 64 * count, (total, expected)
    return before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bv-info-bench-") as work:
        rows = [("local", *measure(str(Path(work) / "repo"), args.chunks))]
        server = start_moto(Path(work) / "moto")
        try:
            os.environ.update(server.env())
            bucket = f"s3://bv-bench-{secrets.token_hex(6)}/repo"
            rows.append(("s3 (moto, loopback)", *measure(bucket, args.chunks)))
        finally:
            if server.proc is not None:
                stop(server.proc)
    print(f"| storage | {args.chunks} chunks: a request each | one listing | speed-up |")
    print("|---|---|---|---|")
    for name, before, after in rows:
        print(f"| {name} | {before:.3f} s | {after:.3f} s | {before / after:.0f}x |")


if __name__ == "__main__":
    main()
