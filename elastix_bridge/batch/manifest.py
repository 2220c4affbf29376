"""A cohort's manifest: one row per pair, read from CSV, TSV or JSON lines, checked as a whole.

Columns (a header row names them; any order; a column may hold the same value in every row, e.g.
an atlas as ``moving``)::

    id, fixed, moving                       required
    fixed_mask, moving_mask, t0             optional: -fMask, -mMask, -t0 of that pair
    fixed_labels, moving_labels             optional, together: label images for Dice per label
    fixed_points, moving_points             optional, together: corresponding points for the TRE

Paths are relative to the manifest's folder. An empty cell (or a missing JSON key) leaves the
option out for that row. Point files are elastix point sets (``point`` or ``index``, the count,
then one point per line, ITK (x, y, z) order) or CSV/TSV with one point per row (physical mm).
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from elastix_bridge.core.image_io import read_image_geometry

REQUIRED = ("id", "fixed", "moving")
OPTIONAL = ("fixed_mask", "moving_mask", "t0", "fixed_labels", "moving_labels", "fixed_points", "moving_points")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ID_MAX = 200  # a file name holds 255 bytes; the batch adds a suffix to an id for its temporary folders
#: The names the batch itself writes into its output folder (besides one folder per id): no id may
#: take one, in any case (a case-insensitive file system would merge them).
BATCH_NAMES = ("summary.csv", "summary.json", "failed", ".batch")


class ManifestError(ValueError):
    """Problems with a manifest or its pairs; ``problems`` lists every one (the message too)."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        lines = "\n".join(f"  {i + 1}. {p}" for i, p in enumerate(self.problems))
        super().__init__(f"{source}: {len(self.problems)} problem(s), nothing was registered:\n{lines}")


@dataclass(frozen=True)
class Pair:
    """One registration of a cohort: what ``elastix-bridge -f FIXED -m MOVING ...`` gets, plus evaluation inputs.

    Attributes:
        id: the pair's name, also its output folder ``DIR/<id>`` (letters, digits, ``.``, ``_``, ``-``).
        fixed, moving: image files.
        fixed_mask, moving_mask, t0: optional files (``-fMask``, ``-mMask``, ``-t0``).
        fixed_labels, moving_labels: optional label images (Dice per label after registration).
        fixed_points, moving_points: optional corresponding point files (target registration error).
    """

    id: str
    fixed: Path
    moving: Path
    fixed_mask: Optional[Path] = None
    moving_mask: Optional[Path] = None
    t0: Optional[Path] = None
    fixed_labels: Optional[Path] = None
    moving_labels: Optional[Path] = None
    fixed_points: Optional[Path] = None
    moving_points: Optional[Path] = None

    def files(self) -> dict[str, Path]:
        """The pair's files by column name (the options it has)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "id" and getattr(self, f.name)}


def _rows(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ManifestError(str(path), [f"line {number} is not JSON: {error.msg}"]) from None
                if not isinstance(row, dict):
                    raise ManifestError(str(path), [f"line {number} is not a JSON object ({{\"id\": ...}})"])
                rows.append(row)
        return rows
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter, skipinitialspace=True)
    header = [str(c).strip() for c in reader.fieldnames or ()]
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:  # csv.DictReader keeps the last of them silently
        raise ManifestError(str(path), [f"the header names column(s) {', '.join(twice)} more than once; "
                                        "keep one column of each name"])
    return list(reader)


def read_manifest(path: str | Path) -> list[Pair]:
    """Read a manifest (``.csv``, ``.tsv`` or ``.jsonl``) into pairs, with paths resolved against its folder.

    Only the manifest's own form is checked here (columns, ids, which cells are given); the files
    are checked by :func:`check_pairs`.

    Raises:
        FileNotFoundError: no such manifest.
        ManifestError: every problem of the form at once (unknown or missing columns, empty or
            duplicate ids (also ids that differ only in case), ids the batch writes itself
            (:data:`BATCH_NAMES`), rows longer than the header, a column named twice, labels or
            points given for one side only).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist; check the path")
    rows = _rows(path)
    return pairs_from_rows(rows, path.parent, str(path))


def pairs_from_rows(rows: Sequence[Mapping[str, Any]], base: str | Path, source: str = "manifest") -> list[Pair]:
    """Pairs from manifest rows (dicts by column name); relative paths are taken from ``base``.

    Raises:
        ManifestError: as :func:`read_manifest`.
    """
    problems: list[str] = []
    if not rows:
        raise ManifestError(source, ["it has no rows; give a header (id,fixed,moving) and one row per pair"])
    columns = set().union(*(r.keys() for r in rows)) - {None}  # None: csv's key for cells beyond the header
    unknown = sorted(str(c) for c in columns if c not in REQUIRED + OPTIONAL)
    problems += [f"row {number} has {len(r[None])} cell(s) more than the header's columns; quote a cell that holds "
                 "the delimiter, or add the column to the header" for number, r in enumerate(rows, 1) if r.get(None)]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)}; the columns are {', '.join(REQUIRED + OPTIONAL)}")
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ManifestError(source, problems + [f"no column {', '.join(missing)}: every row needs id, fixed and "
                                                "moving"])
    pairs, seen = [], {}
    for number, row in enumerate(rows, 1):
        cells = {k: str(v).strip() for k, v in row.items() if k in REQUIRED + OPTIONAL and v not in (None, "")}
        where = f"row {number}" + (f" (id {cells['id']})" if cells.get("id") else "")
        absent = [c for c in REQUIRED if not cells.get(c)]
        if absent:
            problems.append(f"{where}: no {', '.join(absent)}")
            continue
        problems += [f"{where}: {p}" for p in _id_problems(cells["id"], seen)]
        seen.setdefault(cells["id"].casefold(), (number, cells["id"]))
        for a, b in (("fixed_labels", "moving_labels"), ("fixed_points", "moving_points")):
            if bool(cells.get(a)) != bool(cells.get(b)):
                problems.append(f"{where}: {a if cells.get(a) else b} without {b if cells.get(a) else a}; give both "
                                "or neither")
        pairs.append(Pair(cells["id"], **{k: Path(base) / v for k, v in cells.items() if k != "id"}))
    if problems:
        raise ManifestError(source, problems)
    return pairs


def id_problems(ids: Sequence[str]) -> list[str]:
    """Why some of ``ids`` cannot name their folders ``DIR/<id>`` (as the manifest's checks), by position."""
    problems, seen = [], {}
    for number, pair_id in enumerate(ids, 1):
        problems += [f"pair {number} (id {pair_id}): {p}" for p in _id_problems(str(pair_id), seen)]
        seen.setdefault(str(pair_id).casefold(), (number, pair_id))
    return problems


def _id_problems(pair_id: str, seen: Mapping[str, tuple]) -> list[str]:
    """Why ``pair_id`` cannot name its folder ``DIR/<id>`` (``seen``: earlier ids by casefold -> (row, id))."""
    if not _ID.match(pair_id) or len(pair_id) > _ID_MAX:
        return [f"id {pair_id[:60]!r} cannot name a folder; use up to {_ID_MAX} letters, digits, '.', '_' and '-', "
                "starting with a letter or digit"]
    if pair_id.casefold() in BATCH_NAMES:
        return [f"id {pair_id} is a name the batch writes into its output folder ({', '.join(BATCH_NAMES)}, in any "
                "case); rename the pair"]
    if pair_id.casefold() in seen:
        row, other = seen[pair_id.casefold()]
        same = "" if other == pair_id else f" ({other}: ids that differ only in case share one folder on " \
                                           "case-insensitive file systems)"
        return [f"id {pair_id} is also row {row}'s{same}; ids must be unique"]
    return []


def read_points(path: str | Path, geometry=None):
    """Points of an elastix point set or CSV/TSV file, ``(N, D)`` float64, physical mm, ITK (x, y, z) order.

    Args:
        path: elastix point set (first line ``point`` or ``index``, then the count, then one point per
            line) or a CSV/TSV with one point per row (an optional header row is skipped).
        geometry: the image's :class:`~elastix_bridge.core.geometry.ImageGeometry`, needed for
            ``index`` point sets (continuous indices are mapped to physical points with it).

    Raises:
        ValueError: not a point file, or rows of different lengths; naming the file and line.
    """
    lines = [line.split("//")[0].strip() for line in Path(path).read_text().splitlines()]
    lines = [line for line in lines if line]
    kind = lines[0].lower() if lines else ""
    if kind in ("point", "index"):
        rows = lines[2:]
        try:
            count = int(lines[1])
        except (IndexError, ValueError):
            raise ValueError(f"point file {path}: line 2 must give the number of points") from None
        if count != len(rows):
            raise ValueError(f"point file {path}: line 2 says {count} points, the file has {len(rows)}")
        split = [re.split(r"[\s,]+", r) for r in rows]
    else:
        split = [re.split(r"[,\t;]\s*|\s+", r) for r in lines]
        try:
            [float(v) for v in split[0]]
        except (IndexError, ValueError):
            split = split[1:]  # a header row
    try:
        points = np.array([[float(v) for v in row] for row in split], dtype=np.float64)
    except ValueError:
        raise ValueError(f"point file {path}: every row must hold D numbers (ITK x, y[, z] order)") from None
    if points.ndim != 2 or points.shape[0] == 0 or points.shape[1] not in (2, 3):
        raise ValueError(f"point file {path}: expected rows of 2 or 3 coordinates, got shape {points.shape}")
    if kind == "index":
        if geometry is None:
            raise ValueError(f"point file {path} holds indices; its image's geometry is needed to place them")
        points = geometry.index_to_physical(points)
    return points


def check_pairs(pairs: Sequence[Pair]) -> list[str]:
    """Every problem of the pairs' files at once, without reading pixel data (headers only).

    Checked: each file exists and ITK reads its header; fixed and moving (and masks and labels)
    have the same dimension; fixed labels lie on the fixed image's grid (Dice is taken there);
    point files parse and hold as many points on each side, of the images' dimension.

    Returns:
        Problem messages, each naming the pair and the file; empty when all is well.
    """
    problems, headers = [], {}

    def geometry(pair, column):
        path = getattr(pair, column)
        if path not in headers:
            try:
                headers[path] = read_image_geometry(path, f"{column} {path}")
            except (OSError, ValueError) as error:
                headers[path] = error
        if isinstance(headers[path], Exception):
            problems.append(f"pair {pair.id}: {headers[path]}")
            return None
        return headers[path]

    for pair in pairs:
        found = {c: geometry(pair, c) for c in ("fixed", "moving", "fixed_mask", "moving_mask", "fixed_labels",
                                                  "moving_labels") if getattr(pair, c)}
        if pair.t0 and not pair.t0.is_file():
            problems.append(f"pair {pair.id}: t0 {pair.t0} does not exist; check the path")
        fixed = found.get("fixed")
        if fixed is not None:
            for column, g in found.items():
                if g is not None and g.dimension != fixed.dimension:
                    problems.append(f"pair {pair.id}: {column} {getattr(pair, column)} is {g.dimension}D, the fixed "
                                    f"image {fixed.dimension}D")
            labels = found.get("fixed_labels")
            if labels is not None and labels.dimension == fixed.dimension and tuple(labels.size) != tuple(fixed.size):
                problems.append(f"pair {pair.id}: fixed_labels {pair.fixed_labels} has size {tuple(labels.size)}, the "
                                f"fixed image {tuple(fixed.size)}; Dice is taken on the fixed image's grid")
        if pair.fixed_points:
            counts = []
            for column in ("fixed_points", "moving_points"):
                path = getattr(pair, column)
                try:
                    g = found.get("fixed" if column == "fixed_points" else "moving")
                    points = read_points(path, g)
                    counts.append(points.shape)
                    if fixed is not None and points.shape[1] != fixed.dimension:
                        problems.append(f"pair {pair.id}: {column} {path} has {points.shape[1]}D points, the images "
                                        f"are {fixed.dimension}D")
                except (OSError, ValueError) as error:
                    problems.append(f"pair {pair.id}: {column}: {error}")
            if len(counts) == 2 and counts[0][0] != counts[1][0]:
                problems.append(f"pair {pair.id}: {counts[0][0]} fixed points but {counts[1][0]} moving points; "
                                "the TRE needs corresponding points")
    return problems


def pair_hash(pair: Pair, maps_text: str, settings: Mapping[str, Any]) -> str:
    """SHA-256 of what decides a pair's result: its files' bytes, the maps' text and the run settings."""
    h = hashlib.sha256()
    h.update(maps_text.encode())
    h.update(json.dumps(dict(settings), sort_keys=True, default=str).encode())
    for column, path in sorted(pair.files().items()):
        h.update(column.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if path.suffix.lower() == ".mhd":  # a MetaImage header names its data file
            data = re.search(r"^ElementDataFile\s*=\s*(.+)$", path.read_text(errors="replace"), re.M)
            if data and (path.parent / data.group(1).strip()).is_file():
                h.update((path.parent / data.group(1).strip()).read_bytes())
    return h.hexdigest()
