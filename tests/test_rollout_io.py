"""Trajectory files round-trip without loss, in JSONL and Parquet."""
import math

import pytest

from rollout.io import TrajectoryWriter, read_trajectories, write_trajectories
from rollout.trajectory import Trajectory, Turn


def _traj(i: int) -> Trajectory:
    return Trajectory(
        task_id=f"t{i}", messages=[{"role": "user", "content": "é ünïcode \x00 <report>"}],
        token_ids=[1, 2, 4095, 3], response_mask=[0, 1, 1, 0], logprobs=[0.0, -1e-12, -math.pi, 0.0],
        prompt_len=1, turns=[Turn(text="<command>ls</command>", action="command", command="ls",
                                  observation="obs", exit_code=0, gen_time_s=0.125, num_generated_tokens=2),
                             Turn(text="x", action="format_error", format_error="no block", cut_off=True)],
        report={"status": "success", "summary": "s", "details": "d"} if i else None,
        finish_reason="report" if i else "error", error=None if i else "engine: boom", group_id="g",
        policy_version=3, reward=0.5 if i else None, verdict={"score": [1, 2]} if i else None,
        metadata={"format_errors": 1, "nested": {"a": [1.5, None]}})


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_roundtrip_is_lossless(tmp_path, suffix):
    trajs = [_traj(0), _traj(1)]
    path = tmp_path / f"out.{suffix}"
    assert write_trajectories(path, trajs) == 2
    back = read_trajectories(path)
    assert back == trajs
    assert back[1].logprobs[2] == -math.pi and isinstance(back[1].turns[0], Turn)


def test_streaming_writer_and_bad_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    w = TrajectoryWriter(path)
    w.write(_traj(1))
    w.close()
    assert read_trajectories(path) == [_traj(1)]
    with open(path, "a") as f:
        f.write('{"not": "a trajectory"}\n')
    with pytest.raises(ValueError, match=r"s.jsonl:2: not a trajectory record"):
        read_trajectories(path)


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_files_written_before_turns_had_cut_off_still_load(tmp_path, suffix):
    """`Turn.cut_off` (a generation that hit its token budget) came later: older files lack it."""
    import json
    t = _traj(1)
    path = tmp_path / f"old.{suffix}"
    write_trajectories(path, [t])
    if suffix == "jsonl":
        d = json.loads(path.read_text())
        for turn in d["turns"]:
            del turn["cut_off"]
        path.write_text(json.dumps(d) + "\n")
        assert "cut_off" not in path.read_text()
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        table = pq.read_table(path)
        turns = [json.dumps([{k: v for k, v in u.items() if k != "cut_off"} for u in json.loads(s)])
                 for s in table.column("turns").to_pylist()]
        pq.write_table(table.set_column(table.schema.get_field_index("turns"), "turns", pa.array(turns)), path)
    back = read_trajectories(path)[0]
    assert [u.cut_off for u in back.turns] == [False, False]
    assert back.turns[0] == t.turns[0]


def test_distilled_lines_read_as_trajectories_with_their_provenance(tmp_path):
    """One trajectory file format: what `terminus distill` writes ({"trajectory", "provenance"} lines),
    `train-offline` and SFT read, provenance kept; bare and distilled lines may share a file."""
    import json
    path = tmp_path / "sft.jsonl"
    provenance = {"teacher": "openai:big@http://h/v1", "verdict_reward": 0.9}
    path.write_text(json.dumps({"trajectory": _traj(1).to_dict(), "provenance": provenance}) + "\n"
                    + _traj(2).to_json() + "\n")
    first, second = read_trajectories(path)
    assert first.metadata["provenance"] == provenance and first.token_ids == _traj(1).token_ids
    assert second == _traj(2)
