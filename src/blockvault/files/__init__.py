"""File-level backup and restore: directory trees and streams into the same repository.

A file snapshot (``Snapshot.kind == "files"``) holds one tree object per directory
(``repo/tree.py``) and content-defined chunks of the files' data. It is written
through the same writer session as a disk image (``repo/writer.py``) and restored
through the safe tree writer (``pipeline/tree.py``). This layer sits above
``pipeline`` and below ``browse``, ``plans`` and ``cli``, so that browsing, plans and
the CLI all reach file snapshots the same way.
"""
