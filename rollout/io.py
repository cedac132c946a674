"""Trajectory files: JSONL (one Trajectory per line) or Parquet (by the file's suffix), lossless.

Parquet keeps token ids, mask and logprobs as native list columns (int64/int8/float64) and the
nested parts (messages, turns, report, verdict, metadata) as JSON text, so both formats read back
exactly what was written.
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Iterable, Iterator

from rollout.trajectory import Trajectory
from core.errors import UserError

_JSON_COLUMNS = ("messages", "turns", "report", "verdict", "metadata")


class TrajectoryFileError(UserError, ValueError):
    """A trajectory file that is missing or not trajectories; names the file (and line)."""


def is_parquet(path: str | Path) -> bool:
    return str(path).endswith(".parquet")


def write_trajectories(path: str | Path, trajectories: Iterable[Trajectory]) -> int:
    """Write all trajectories (overwrites); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trajectories = list(trajectories)
    if is_parquet(path):
        import pyarrow as pa
        import pyarrow.parquet as pq
        rows = [_to_row(t) for t in trajectories]
        schema = pa.schema([(f.name, _arrow_type(f.name)) for f in fields(Trajectory)])
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    else:
        with open(path, "w", encoding="utf-8") as f:
            for t in trajectories:
                f.write(t.to_json() + "\n")
    return len(trajectories)


class TrajectoryWriter:
    """Append trajectories to a JSONL file as they finish (a crash keeps what was done)."""

    def __init__(self, path: str | Path):
        if is_parquet(path):
            raise ValueError("TrajectoryWriter streams JSONL; write Parquet with write_trajectories at the end")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w", encoding="utf-8")

    def write(self, t: Trajectory) -> None:
        self._f.write(t.to_json() + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def read_trajectories(path: str | Path) -> list[Trajectory]:
    return list(iter_trajectories(path))


def iter_trajectories(path: str | Path) -> Iterator[Trajectory]:
    path = Path(path)
    if not path.is_file():
        raise TrajectoryFileError(f"trajectory file '{path}' does not exist (a .jsonl or .parquet of trajectories, "
                                  f"e.g. from `terminus rollout` or `terminus distill`)")
    if is_parquet(path):
        import pyarrow.parquet as pq
        try:
            rows = pq.read_table(path).to_pylist()
        except (OSError, ValueError) as e:   # pyarrow's ArrowInvalid is a ValueError
            raise TrajectoryFileError(f"{path}: not a Parquet file of trajectories ({e})") from None
        for n, row in enumerate(rows, 1):
            try:
                yield _from_row(row)
            except (KeyError, TypeError, ValueError) as e:
                raise TrajectoryFileError(f"{path}: row {n}: not a trajectory record ({type(e).__name__}: {e})") from None
        return
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield _from_line(json.loads(line))
            except (TypeError, ValueError, AttributeError) as e:   # bad JSON, or JSON of another shape
                raise TrajectoryFileError(f"{path}:{n}: not a trajectory record ({type(e).__name__}: {e})") from None


def _from_line(row: dict) -> Trajectory:
    """A trajectory line: a bare trajectory (`terminus rollout`, eval files) or a distilled one,
    `{"trajectory": ..., "provenance": ...}` (`terminus distill`), its provenance kept in metadata."""
    if isinstance(row, dict) and "trajectory" in row and "token_ids" not in row:
        traj = Trajectory.from_dict(row["trajectory"])
        traj.metadata["provenance"] = row.get("provenance", {})
        return traj
    return Trajectory.from_dict(row)


def _arrow_type(name: str):
    import pyarrow as pa
    return {"token_ids": pa.list_(pa.int64()), "response_mask": pa.list_(pa.int8()),
            "logprobs": pa.list_(pa.float64()), "prompt_len": pa.int64(), "policy_version": pa.int64(),
            "reward": pa.float64()}.get(name, pa.string())


def _to_row(t: Trajectory) -> dict:
    d = t.to_dict()
    for k in _JSON_COLUMNS:
        d[k] = json.dumps(d[k])
    return d


def _from_row(row: dict) -> Trajectory:
    row = dict(row)
    for k in _JSON_COLUMNS:
        row[k] = json.loads(row[k])
    return Trajectory.from_dict(row)
