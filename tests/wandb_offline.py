"""Read the history records of an offline W&B run file (test helper: leveldb-style log of protobufs)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
BLOCK = 32768


def _records(run_file: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(run_file).read_bytes()
    assert data[:4] == b":W&B", f"{run_file}: not a W&B run file"
    pos, records, buf = HEADER, [], b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            records.append(buf + chunk)
            buf = b""
    out = []
    for raw in records:
        rec = pb.Record()
        rec.ParseFromString(raw)
        out.append(rec)
    return out


def history(run_file: Path) -> list[dict]:
    out = []
    for rec in _records(run_file):
        if rec.WhichOneof("record_type") == "history":
            out.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item})
    return out


def run_info(run_file: Path) -> dict:
    """The run record: group, tags and config (key -> value) of an offline run file."""
    for rec in _records(run_file):
        if rec.WhichOneof("record_type") == "run":
            r = rec.run
            config = {i.key: json.loads(i.value_json) for i in r.config.update}
            return {"group": r.run_group, "tags": list(r.tags), "job_type": r.job_type, "config": config}
    raise AssertionError(f"{run_file}: no run record")


def artifacts(run_file: Path) -> list[tuple[str, list[str]]]:
    """(type, file paths in its manifest) of every artifact an offline run file records (tables are run_table
    artifacts holding the table JSON and its images)."""
    return [(r.artifact.type, [e.path for e in r.artifact.manifest.contents])
            for r in _records(run_file) if r.WhichOneof("record_type") == "artifact"]
