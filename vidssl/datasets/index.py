"""A metadata cache beside a manifest: frame counts, fps, durations and audio presence, probed once.

Probing every file of a large dataset at each start is slow (one reference implementation spent about ten
hours indexing Kinetics-400 without a cache), so `build_index` stores each file's `VideoMeta` in a JSON file
together with the file's size and mtime, and probes again only files that are new or whose size or mtime
changed. Unreadable files are cached too, as their error message, so a corrupt file is not re-probed on
every run until it changes.

The file (``INDEX_VERSION`` 1)::

    {"version": 1, "backend": "av",
     "files": {"videos/a.mp4": {"size": 123, "mtime_ns": 1700000000000000000, "meta": {...VideoMeta...}},
               "videos/b.mp4": {"size": 0, "mtime_ns": 1700000000000000000, "error": "videos/b.mp4: ..."}}}
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable

from vidssl.datasets.decode import BACKENDS, VideoDecodeError, VideoMeta, probe
from vidssl.files import atomic_write_text

INDEX_VERSION = 1
log = logging.getLogger(__name__)


def index_path_for(manifest: str | os.PathLike) -> Path:
    """Where the index of a manifest lives: ``train.csv`` -> ``train.index.json`` in the same folder."""
    manifest = Path(manifest)
    return manifest.with_name(manifest.stem + ".index.json")


def _load_rows(index_path: Path, backend: str) -> dict[str, dict[str, Any]]:
    """The rows of an existing index, or none when it is missing, unreadable or for another backend."""
    if not index_path.exists():
        return {}
    try:
        data = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable index %s (%s); probing again", index_path, e)
        return {}
    if not isinstance(data, dict) or data.get("version") != INDEX_VERSION or data.get("backend") != backend:
        return {}
    files = data.get("files")
    return files if isinstance(files, dict) else {}


def _row_result(row: dict[str, Any]) -> VideoMeta | str | None:
    """A cached row as a result; None when the row is malformed and must be probed again."""
    if "error" in row:
        return str(row["error"])
    try:
        return VideoMeta(**row["meta"])
    except (KeyError, TypeError):
        return None


def _probe_one(path: Path, backend: str) -> VideoMeta | str:
    try:
        return probe(path, backend)
    except VideoDecodeError as e:
        return str(e)


def build_index(
    root: str | os.PathLike,
    paths: Iterable[str],
    index_path: str | os.PathLike,
    *,
    backend: str = "av",
    workers: int = 2,
) -> dict[str, VideoMeta | str]:
    """Metadata of every path, from the cache at `index_path` where still valid, else probed in parallel.

    Args:
        root: the dataset root; `paths` are relative to it (as in a manifest).
        paths: the files (or frame folders, with backend="frames") to index.
        index_path: the JSON cache; created or updated atomically (rows of other paths are kept).
        backend: the `probe` backend; an index built with another backend is rebuilt.
        workers: probing threads (probing is I/O and FFmpeg header parsing, which release the GIL).
    Returns:
        {path: VideoMeta, or the error message (a str naming the file) for a file that cannot be read},
        in the order of `paths`. Missing files get "file not found" and are never cached.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
    root, index_path = Path(root), Path(index_path)
    paths = list(dict.fromkeys(paths))  # unique, in order
    rows = _load_rows(index_path, backend)
    results: dict[str, VideoMeta | str] = {}
    stats: dict[str, os.stat_result] = {}
    to_probe: list[str] = []
    for rel in paths:
        try:
            stats[rel] = (root / rel).stat()
        except OSError:
            results[rel] = str(VideoDecodeError(root / rel, "file not found"))
            continue
        row = rows.get(rel)
        cached = None
        if row is not None and row.get("size") == stats[rel].st_size and row.get("mtime_ns") == stats[rel].st_mtime_ns:
            cached = _row_result(row)
        if cached is None:
            to_probe.append(rel)
        else:
            results[rel] = cached

    if to_probe:
        log.info("indexing %d of %d files with %d workers", len(to_probe), len(paths), workers)
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                probed = list(pool.map(lambda rel: _probe_one(root / rel, backend), to_probe))
        else:
            probed = [_probe_one(root / rel, backend) for rel in to_probe]
        for rel, result in zip(to_probe, probed):
            results[rel] = result
            row = {"size": stats[rel].st_size, "mtime_ns": stats[rel].st_mtime_ns}
            if isinstance(result, VideoMeta):
                row["meta"] = dataclasses.asdict(result)
            else:
                row["error"] = result
            rows[rel] = row
        # atomic: a reader (or a crash) never sees a half-written index
        atomic_write_text(index_path, json.dumps({"version": INDEX_VERSION, "backend": backend, "files": rows},
                                                 indent=1, sort_keys=True))
    return {rel: results[rel] for rel in paths}
