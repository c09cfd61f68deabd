"""A decoder call that hangs is ended, not abandoned: its process is killed and the run goes on.

The hang is real: a named pipe called ``hang.mp4``. Opening it for reading blocks until a writer comes,
which never happens, so FFmpeg blocks inside ``avformat_open_input`` as on a stuck network mount.
"""

from __future__ import annotations

import contextlib
import errno
import operator
import os
import shutil
import time

import pandas as pd
import pytest
from conftest import extract_config, make_run

from ecmf_ray import features
from ecmf_ray.data.synth import synthesize
from ecmf_ray.extract import decode, decoder_process, journal
from ecmf_ray.extract.decoder_process import DecoderProcess, DecodeTimeout
from ecmf_ray.extract.pipeline import run_extract
from ecmf_ray.stall import Stalled

HANG = "hang"
TIMEOUT_S = 15  # generous: good clips must decode within it on a loaded 2-core CI machine
STALL_S = 20


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _has_reader(fifo: str) -> bool:
    """True while any process or thread has the pipe open for reading, or is blocked opening it."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ENXIO:  # no reader at all
            return False
        raise
    os.close(fd)
    return True


def test_decoder_process_runs_returns_raises_and_is_killed_on_timeout() -> None:
    decoder = DecoderProcess()
    try:
        assert decoder.call(operator.add, (1, 2), 30, "quick") == 3
        first = decoder.pid
        with pytest.raises(ZeroDivisionError):
            decoder.call(operator.truediv, (1, 0), 30, "error")
        assert decoder.pid == first  # reused across calls, errors included
        start = time.perf_counter()
        with pytest.raises(
            DecodeTimeout, match=rf"hang did not finish within 0.5 s; decoder process {first} killed"
        ):
            decoder.call(time.sleep, (600,), 0.5, "hang")
        assert time.perf_counter() - start < 10
        assert decoder.pid is None and not _alive(first)  # killed and reaped
        assert decoder.call(operator.add, (2, 2), 30, "after") == 4  # a fresh child
        assert decoder.pid not in (None, first)
    finally:
        decoder.close()
    assert decoder.pid is None


@pytest.fixture
def hang_run(tmp_path) -> tuple[str, pd.DataFrame]:
    root = str(tmp_path / "data")
    synthesize(root, 2, duration_s=2.0, width=160, height=120, hide_prob=0.0)
    video_dir = os.path.join(root, "video")
    names = pd.read_csv(os.path.join(root, "subtitle_chieng.csv"))
    rows = [
        (n, os.path.join(video_dir, f"{n}.mp4"), t)
        for n, t in zip(names["name"], names["chinese"], strict=True)
    ]
    fifo = os.path.join(video_dir, f"{HANG}.mp4")
    os.mkfifo(fifo)
    rows.insert(1, (HANG, fifo, "一直在等。"))
    frame = pd.DataFrame(rows, columns=["video_id", "video_path", "text"])
    frame = frame.assign(label=None, split="unlabeled", valence=None)
    return fifo, frame


def test_hung_decode_is_reported_and_leaves_nothing_running(
    ray_cluster, hang_run: tuple[str, pd.DataFrame], tmp_path, model_cache: str
) -> None:
    fifo, clips = hang_run
    run_dir = make_run(str(tmp_path / "run"), clips)
    # One decode task for all three clips: the clip after the hang needs the replacement decoder.
    cfg = extract_config(
        run_dir, model_cache, f"extract.decode.timeout_s={TIMEOUT_S}", "extract.decode.batch_size=8"
    )
    summary = run_extract(cfg)

    assert summary["processed"] == len(clips)
    errors = pd.read_parquet(features.errors_path(run_dir)).set_index(["video_id", "branch"])
    assert set(errors.index) == {(HANG, b) for b in ("frame", "face", "audio")}  # the text needs no file
    assert (errors["error_type"] == "DecodeTimeout").all()
    for branch, stage in (("frame", "decode_video"), ("face", "decode_video"), ("audio", "decode_audio")):
        assert errors.loc[(HANG, branch), "stage"] == stage
    good = set(clips["video_id"]) - {HANG}
    for branch in features.BRANCHES:
        ids, vectors = features.load_branch(run_dir, branch)
        assert good <= set(ids)
    ids, _ = features.load_branch(run_dir, "text")
    assert HANG in ids

    # Nothing is left blocked on the pipe: no decoder process, no abandoned thread in the Ray worker.
    assert not _has_reader(fifo)
    killed = {int(m) for m in errors["message"].str.extract(r"decoder process (\d+) killed")[0]}
    assert len(killed) == 2  # the video call's child and the audio call's child
    assert not any(_alive(pid) for pid in killed)


def test_the_child_imports_what_it_runs_before_any_deadline_starts() -> None:
    """A replacement child's first clip must not pay for importing the decode module within its timeout."""
    for fn in (decode.read_frames, decode.read_audio):
        assert fn.__module__ in decoder_process.PRELOAD


def test_this_process_decoder_is_reused() -> None:
    assert decoder_process.call(operator.mul, (6, 7), 30, "first") == 42
    pid = decoder_process.current_pid()
    assert decoder_process.call(operator.mul, (2, 3), 30, "second") == 6
    assert decoder_process.current_pid() == pid


def test_a_stalled_run_fails_naming_the_stage_then_a_rerun_resumes(
    ray_cluster, hang_run: tuple[str, pd.DataFrame], tmp_path, model_cache: str
) -> None:
    """A decode that blocks longer than extract.stall_timeout_s stops the run with one error naming the
    stage and the videos done and not done; once the file is readable, a rerun extracts every video once."""
    fifo, clips = hang_run
    run_dir = make_run(str(tmp_path / "run"), clips)
    overrides = ["extract.decode.timeout_s=600", "extract.write.videos_per_file=1"]
    with pytest.raises(Stalled) as stalled:
        run_extract(extract_config(run_dir, model_cache, f"extract.stall_timeout_s={STALL_S}", *overrides))
    message = str(stalled.value)
    assert message.startswith(f"extract: no progress for {STALL_S} s (extract.stall_timeout_s)")
    assert f"0 of {len(clips)} videos done, {len(clips)} not done" in message  # one decode task holds all
    assert "Rerun `ecmf extract` to resume" in message
    assert journal.read_journal(run_dir).empty

    with contextlib.suppress(OSError):  # a reader still blocked on the pipe, if any, sees its end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    os.remove(fifo)
    shutil.copy(clips.loc[clips["video_id"] != HANG, "video_path"].iloc[0], fifo)
    summary = run_extract(extract_config(run_dir, model_cache, *overrides))
    assert summary["processed"] == len(clips) and summary["videos_errored"] == 0
    # The journal and the shards themselves: every video written exactly once.
    index = pd.read_parquet(journal.index_path(run_dir))
    assert sorted(index["video_id"]) == sorted(clips["video_id"])
    shards = journal.read_shards(run_dir, journal.shard_names(run_dir), ["video_id"])
    assert sorted(shards.column("video_id").to_pylist()) == sorted(clips["video_id"])
