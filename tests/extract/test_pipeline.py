"""The Ray Data pipeline end to end: accounting, dimensions, resume, and equality with the sequential loop."""

from __future__ import annotations

import concurrent.futures
import errno
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import GOOD, MISSING, extract_config, make_run

from ecmf_ray import features, storage
from ecmf_ray.extract import journal, spec, store
from ecmf_ray.extract.pipeline import run_extract
from ecmf_ray.extract.reference import run_sequential

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from fake_features import driver_log, start_driver  # noqa: E402

PREWRITTEN = 3  # videos the interrupted "first run" managed to write


@pytest.fixture(scope="module")
def resumed_run(ray_cluster, clips: pd.DataFrame, model_cache: str, tmp_path_factory: pytest.TempPathFactory):
    """An interrupted run (a few shards and a half-written temp file) finished by the Ray pipeline."""
    run_dir = make_run(str(tmp_path_factory.mktemp("ray-run")), clips)
    cfg = extract_config(run_dir, model_cache)
    run_sequential(cfg, limit=PREWRITTEN)
    storage.write_bytes(storage.join(journal.shards_dir(run_dir), "x.parquet.tmp-dead"), b"PAR1 half")
    return cfg, run_extract(cfg)


@pytest.fixture(scope="module")
def sequential_run(clips: pd.DataFrame, model_cache: str, tmp_path_factory: pytest.TempPathFactory):
    run_dir = make_run(str(tmp_path_factory.mktemp("seq-run")), clips)
    return run_sequential(extract_config(run_dir, model_cache)) | {"run_dir": run_dir}


def _errors(run_dir: str) -> pd.DataFrame:
    return pd.read_parquet(features.errors_path(run_dir))


def test_resume_processes_only_the_rest(resumed_run, clips: pd.DataFrame) -> None:
    cfg, summary = resumed_run
    assert summary["resumed"] == PREWRITTEN
    assert summary["processed"] == len(clips) - PREWRITTEN
    assert not [n for n in storage.listdir(journal.shards_dir(cfg.run_dir)) if ".tmp-" in n]
    # The write stage: one shard for the rest (extract.write.videos_per_file is 1000), plus the first
    # run's one shard per clip; the index names each video once.
    assert len(journal.shard_names(cfg.run_dir)) == PREWRITTEN + 1
    index = pd.read_parquet(journal.index_path(cfg.run_dir))
    assert sorted(index["video_id"]) == sorted(clips["video_id"])


def test_every_video_accounted_once_per_branch(resumed_run, clips: pd.DataFrame) -> None:
    cfg, summary = resumed_run
    errors = _errors(cfg.run_dir)
    expected = set(clips["video_id"])
    for branch in features.BRANCHES:
        ids, _ = features.load_branch(cfg.run_dir, branch)
        failed = errors.loc[errors["branch"] == branch, "video_id"].tolist()
        assert len(ids) == len(set(ids)) and len(failed) == len(set(failed))
        assert not set(ids) & set(failed)
        assert set(ids) | set(failed) == expected
    good = {v for v in expected if v.startswith("sample_")}
    assert summary["videos_ok"] == GOOD and summary["videos_errored"] == len(expected) - GOOD
    assert good.isdisjoint(errors["video_id"])


def test_broken_inputs_report_their_stage(resumed_run) -> None:
    cfg, _ = resumed_run
    errors = _errors(cfg.run_dir).set_index(["video_id", "branch"])
    stage = errors["stage"].to_dict()
    for name in ("broken_empty", "broken_text", "broken_truncated"):
        assert stage[(name, "frame")] == stage[(name, "face")] == "decode_video"
        assert stage[(name, "audio")] == "decode_audio"
    for branch in ("frame", "face", "audio"):
        assert stage[(MISSING, branch)] == "open"
        assert errors.loc[(MISSING, branch), "error_type"] == "FileNotFoundError"
    # No audio stream: only the audio branch fails; the text branch never depends on the file.
    assert errors.loc[("broken_noaudio", "audio"), "error_type"] == "NoAudioStream"
    assert {b for v, b in errors.index if v == "broken_noaudio"} == {"audio"}
    assert not {b for _, b in errors.index} & {"text"}


def test_vectors_finite_with_configured_dims(resumed_run) -> None:
    cfg, _ = resumed_run
    dims = {
        "frame": 48,
        "face": 48,
        "audio": 64,
        "text": 64,
    }  # tiny CLIP projection, tiny HuBERT / BERT width
    for branch, dim in dims.items():
        table = pq.read_table(features.branch_dir(cfg.run_dir, branch))
        matrix = features.feature_matrix(table)
        assert matrix.shape[1] == dim and np.isfinite(matrix).all()
        assert set(table.column("dtype").to_pylist()) == {"fp32"}
    face = pq.read_table(features.branch_dir(cfg.run_dir, "face")).to_pandas()
    assert (face["n_frames"] == 4).all() and face["face_ratio"].between(0, 1).all()
    audio = pq.read_table(features.branch_dir(cfg.run_dir, "audio")).to_pandas()
    assert set(audio["layers"]) == {"2,3,4"} and set(audio["model"]) == {"tiny:hubert"}


def test_ray_matches_sequential(resumed_run, sequential_run) -> None:
    cfg, _ = resumed_run
    for branch in features.BRANCHES:
        ray_ids, ray_matrix = features.load_branch(cfg.run_dir, branch)
        seq_ids, seq_matrix = features.load_branch(sequential_run["run_dir"], branch)
        assert ray_ids == seq_ids
        np.testing.assert_allclose(ray_matrix, seq_matrix, rtol=1e-4, atol=1e-5, err_msg=branch)


def test_rerun_of_a_finished_run_changes_nothing(resumed_run) -> None:
    cfg, _ = resumed_run
    before = {b: features.load_branch(cfg.run_dir, b) for b in features.BRANCHES}
    summary = run_extract(cfg)
    assert summary["processed"] == 0
    for branch, (ids, matrix) in before.items():
        again_ids, again = features.load_branch(cfg.run_dir, branch)
        assert again_ids == ids and np.array_equal(again, matrix)
    assert os.listdir(features.branch_dir(cfg.run_dir, "frame")) == ["part-00000.parquet"]


def _branch_bytes(run_dir: str, branch: str) -> dict[str, bytes]:
    folder = Path(features.branch_dir(run_dir, branch))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_changed_hubert_layers_reextract_the_audio_branch_alone(
    ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str, capsys
) -> None:
    """A finished run, then another HuBERT layer list: only audio is extracted again, once per video; the
    other branches' files stay byte for byte; the old audio features wait under features/audio.<hash>/
    until the run finishes."""
    run_dir = make_run(str(tmp_path), clips)
    run_sequential(extract_config(run_dir, model_cache))
    before = {b: _branch_bytes(run_dir, b) for b in features.BRANCHES}
    old_spec, old_data = spec.read_spec(run_dir), spec.data_digest(run_dir)
    old_rows = len(journal.read_journal(run_dir))

    changed = extract_config(run_dir, model_cache, "extract.hubert.layers=[1,2]")
    assert "changed: audio.layers" in store.current(changed)
    plan = store.plan_run(changed)  # retires the old audio features, extracts nothing yet
    assert [(p.branches, len(p.todo)) for p in plan.passes] == [(["audio"], len(clips))]
    retired = Path(store.retired_dir(run_dir, "audio", old_spec["audio"]))
    assert not Path(features.branch_dir(run_dir, "audio")).exists()
    assert {p.name: p.read_bytes() for p in retired.iterdir()} == before["audio"]

    summary = run_extract(changed)
    out = capsys.readouterr().out
    assert "audio extracted again, frame, face, text kept" in out
    assert f"extract: {len(clips)} videos, branches audio" in out
    assert summary["processed"] == len(clips) and summary["resumed"] == 0
    # The audio model ran once per video and nothing else ran: the journal's new rows are audio alone,
    # each video once, and the new shards hold no other branch's columns.
    rows = journal.read_journal(run_dir)
    new = rows.iloc[old_rows:]
    new_spec = spec.feature_spec(changed)
    assert set(new["specs"]) == {journal.specs_key(spec.branch_digests({"audio": new_spec["audio"]}))}
    assert sorted(new["video_id"]) == sorted(clips["video_id"])
    for name in new["shard"].unique():
        columns = pq.read_schema(Path(journal.shards_dir(run_dir), name)).names
        assert not [c for c in columns if c.startswith(("frame", "face", "text"))], columns
    for branch in ("frame", "face", "text"):
        assert _branch_bytes(run_dir, branch) == before[branch], branch
    audio = pd.read_parquet(features.branch_dir(run_dir, "audio"))
    assert set(audio["layers"]) == {"1,2"}
    assert not retired.exists()  # the run finished: the old features go
    assert spec.read_spec(run_dir) == new_spec and store.current(changed) is None
    assert spec.data_digest(run_dir) != old_data  # training on the old features is stale
    assert_accounted_once(run_dir, set(clips["video_id"]))


def assert_accounted_once(run_dir: str, expected: set[str]) -> None:
    """Every video in exactly one of a branch's features and its errors, once."""
    errors = _errors(run_dir)
    for branch in features.BRANCHES:
        ids, _ = features.load_branch(run_dir, branch)
        failed = errors.loc[errors["branch"] == branch, "video_id"].tolist()
        assert sorted(ids + failed) == sorted(expected), branch


def test_retry_errors_processes_only_the_errored_videos(
    ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str
) -> None:
    """A file missing at the first run is there at the second: retry_errors=true extracts it and the
    other errored videos again, replaces its errors with features, and leaves the rest as they were."""
    late = str(tmp_path / "late.mp4")
    run_dir = make_run(
        str(tmp_path / "run"),
        clips.assign(video_path=clips["video_path"].mask(clips["video_id"].eq(MISSING), late)),
    )
    cfg = extract_config(run_dir, model_cache)
    first = run_sequential(cfg)
    before = {b: features.load_branch(run_dir, b) for b in features.BRANCHES}
    errored = set(_errors(run_dir)["video_id"])
    assert MISSING in errored and first["videos_errored"] == len(errored)

    shutil.copy(clips.loc[clips["video_id"].str.startswith("sample_"), "video_path"].iloc[0], late)
    assert run_extract(cfg)["processed"] == 0  # off by default: errors stay
    retry = extract_config(run_dir, model_cache, "extract.retry_errors=true")
    assert "errored" in store.current(retry)
    summary = run_extract(retry)
    assert summary["processed"] == len(errored)
    assert MISSING not in set(_errors(run_dir)["video_id"])
    assert summary["videos_errored"] == len(errored) - 1
    assert_accounted_once(run_dir, set(clips["video_id"]))
    for branch, (ids, matrix) in before.items():
        now_ids, now = features.load_branch(run_dir, branch)
        assert set(now_ids) == {*ids, MISSING}
        kept = [now_ids.index(v) for v in ids]
        np.testing.assert_array_equal(now[kept], matrix)


def test_kill_during_the_write_stage_then_a_rerun_loses_and_repeats_nothing(
    ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str, sequential_run
) -> None:
    """A driver killed -9 once the write stage has written its first shards (two videos each); the
    rerun processes only the videos no shard holds, and the outputs equal an uninterrupted run's."""
    run_dir = make_run(str(tmp_path), clips)
    args = [f"run_dir={run_dir}", f"storage.model_cache={model_cache}", "extract.frames.num=4",
            *(f"extract.{stage}.batch_size=2" for stage in ("decode", "clip", "hubert", "roberta")),
            "extract.write.videos_per_file=2"]  # fmt: skip
    log = tmp_path / "driver.log"
    driver = start_driver(ray_cluster, "ecmf_ray.extract.pipeline:run_extract", args, log)
    try:
        deadline = time.monotonic() + 300
        while not storage.exists(journal.shards_dir(run_dir)) or not journal.shard_names(run_dir):
            assert driver.poll() is None, f"the driver ended before its first shard; {driver_log(log)}"
            assert time.monotonic() < deadline, f"no shard within 300 s; {driver_log(log)}"
            time.sleep(0.05)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    written = journal.read_journal(run_dir)
    assert 0 < len(written) < len(clips) and not written["video_id"].duplicated().any()

    summary = run_extract(extract_config(run_dir, model_cache, "extract.write.videos_per_file=2"))
    assert summary["resumed"] == len(written)
    assert summary["processed"] == len(clips) - len(written)
    index = pd.read_parquet(journal.index_path(run_dir))
    assert sorted(index["video_id"]) == sorted(clips["video_id"])  # each video written once
    assert_accounted_once(run_dir, set(clips["video_id"]))
    for branch in features.BRANCHES:
        ids, matrix = features.load_branch(run_dir, branch)
        seq_ids, seq_matrix = features.load_branch(sequential_run["run_dir"], branch)
        assert ids == seq_ids
        np.testing.assert_allclose(matrix, seq_matrix, rtol=1e-4, atol=1e-5, err_msg=branch)


def _reader_waiting(fifo: str) -> int | None:
    """A write end of ``fifo`` if some process has it open for reading (else None): opening a FIFO to
    write without blocking fails with ENXIO while it has no reader."""
    try:
        return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as err:
        if err.errno != errno.ENXIO:
            raise
        return None


def test_two_decode_tasks_run_at_once(ray_cluster, tmp_path, clips: pd.DataFrame, model_cache: str) -> None:
    """On 2 CPUs the local profile's budget runs two decode tasks at the same time.

    Each of two decode tasks (a block of extract.decode.batch_size videos each) starts with a named pipe,
    whose reader blocks until the test writes to it. The test holds the first pipe's reader until the
    second pipe has one too, then checks that the first is still reading, so both tasks were decoding at
    once however loaded the machine. A budget that runs one decode task at a time never opens the second
    pipe while the first blocks, and the test fails at its deadline. The pipes' videos then fail to
    decode; the others are extracted.
    """
    cfg = extract_config(str(tmp_path / "run"), model_cache, "extract.decode.timeout_s=900")
    batch = int(cfg.extract.decode.batch_size)
    good = clips.loc[clips["video_id"].str.startswith("sample_")].iloc[0]
    pipes = [str(tmp_path / f"block{b}.mp4") for b in range(2)]
    for pipe in pipes:
        os.mkfifo(pipe)
    rows = [
        (f"block{b}_{i}", pipes[b] if i == 0 else good["video_path"], good["text"])
        for b in range(2)
        for i in range(batch)
    ]
    frame = pd.DataFrame(rows, columns=["video_id", "video_path", "text"])
    make_run(cfg.run_dir, frame.assign(label=None, split="unlabeled", valence=None))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        run = pool.submit(run_extract, cfg)
        held: dict[str, int] = {}
        try:
            deadline = time.monotonic() + 300
            while len(held) < 2 and time.monotonic() < deadline and not run.done():
                for pipe in set(pipes) - set(held):
                    if (fd := _reader_waiting(pipe)) is not None:
                        held[pipe] = fd
                time.sleep(0.05)
            if run.done():
                run.result()  # the run's own error, if it ended early
            assert len(held) == 2, f"only {sorted(held)} of the two decode tasks' pipes had a reader at once"
            for fd in held.values():  # BrokenPipeError if a reader, the first one held, gave up meanwhile
                os.write(fd, b"\0")
        finally:
            for fd in held.values():
                os.close(fd)
            while not run.done():  # each later open of a pipe (another decoder call) reads EOF at once
                for pipe in pipes:
                    if (fd := _reader_waiting(pipe)) is not None:
                        os.close(fd)
                time.sleep(0.05)
        summary = run.result()
    errored = set(_errors(cfg.run_dir)["video_id"])
    assert errored == {"block0_0", "block1_0"}
    assert summary["videos_ok"] == 2 * batch - 2
