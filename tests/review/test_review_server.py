"""The review page's server logic, without Ray or a browser: queue loading, the decision store, the routes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pandas as pd
import pytest
from aiohttp.test_utils import TestClient, TestServer

from ecmf_ray import storage
from ecmf_ray.config import load_config
from ecmf_ray.data.manifest import manifest_path, write_manifest
from ecmf_ray.review.decisions import (
    DecisionError,
    DecisionStore,
    read_decision_table,
    reviewed_labels,
    reviewed_path,
    with_review_decisions,
)
from ecmf_ray.review.queue import Review, load_review
from ecmf_ray.review.server import build_app

VIDEO = bytes(range(256)) * 40  # 10,240 bytes standing in for a clip: range tests need no decoder
TOKEN = "secret-token"


def write_run(run_dir: Path) -> None:
    """A finished run in miniature: 5 labelled clips (one without its video), a queue naming 3 of them
    and one clip the manifest lacks, relabel.parquet with two vote changes, and the ensemble's OOF."""
    (run_dir / "video").mkdir(parents=True)
    ids = [f"c{i}" for i in range(5)]
    for v in ids[:4]:
        (run_dir / "video" / f"{v}.mp4").write_bytes(VIDEO)
    write_manifest(
        pd.DataFrame(
            {
                "video_id": ids,
                "video_path": [str(run_dir / "video" / f"{v}.mp4") for v in ids],
                "text": ["我很开心", "", "他生气了", "", ""],
                "label": ["happy", "sad", "angry", "neutral", "worried"],
                "split": ["train"] * 5,
                "valence": [None] * 5,
            }
        ),
        manifest_path(str(run_dir)),
    )
    final = run_dir / "final"
    final.mkdir()
    pd.DataFrame(
        {
            "video_id": ["c0", "c2", "c4", "ghost"],
            "original": ["happy", "angry", "worried", "sad"],
            "votes": ["audio:sad, text:sad", "audio:happy, text:sad", "audio:neutral", "audio:happy"],
            "refined": ["happy", "angry", "worried", "sad"],
        }
    ).to_csv(final / "review_queue.csv", index=False)
    pd.DataFrame(
        {
            "video_id": ids,
            "original": ["happy", "sad", "angry", "neutral", "worried"],
            "refined": ["happy", "happy", "angry", "sad", "worried"],
            "votes": ["audio:sad, text:sad", "audio:happy, text:happy", "", "audio:sad, text:sad", ""],
            "changed": [False, True, False, True, False],
        }
    ).to_parquet(final / "relabel.parquet")
    pd.DataFrame(
        {"video_id": ids, "label": ["happy"] * 5, "predicted": ["sad", "happy", "sad", "sad", "neutral"]}
    ).to_parquet(final / "ensemble_oof.parquet")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_run(tmp_path / "run")
    return tmp_path / "run"


def config(run_dir: Path, *overrides: str):
    return load_config(["local"], [f"run_dir={run_dir}", *overrides])


def test_the_queue_with_its_problems(run_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    review = load_review(config(run_dir))
    assert [i["video_id"] for i in review.items] == ["c0", "c2", "c4"]
    first = review.items[0]
    assert first["original"] == "happy" and first["ensemble"] == "sad" and first["text"] == "我很开心"
    assert first["votes"] == [
        {"source": "audio", "label": "sad", "probability": None},
        {"source": "text", "label": "sad", "probability": None},
    ]
    assert first["problem"] is None and review.videos["c0"].endswith("c0.mp4")
    # The clip the manifest lacks and the clip without a video: a message each, on the page and in the log.
    assert any("not in the manifest" in p and "ghost" in p for p in review.problems)
    assert review.items[2]["problem"].startswith("video missing") and "c4" not in review.videos
    assert "ghost" in caplog.text and "video missing" in caplog.text
    assert review.rerun == (
        f"ecmf finalize --config {run_dir}/config/review.yaml "
        f"finalize.relabel.reviewed={run_dir}/final/reviewed.csv"
    )


def test_no_queue_is_a_message(run_dir: Path) -> None:
    (run_dir / "final" / "review_queue.csv").unlink()
    review = load_review(config(run_dir))
    assert review.items == [] and "no review queue" in review.problems[0]


def test_audit_sample_draws_from_the_votes_changes(run_dir: Path) -> None:
    review = load_review(config(run_dir, "review.sample=5"))
    audit = [i for i in review.items if i["audit"]]
    # Only two labels changed; the queue's own clips are never drawn again.
    assert sorted(i["video_id"] for i in audit) == ["c1", "c3"]
    assert {i["video_id"]: i["refined"] for i in audit} == {"c1": "happy", "c3": "sad"}


def test_decisions_are_kept_once_each_and_the_later_wins(tmp_path: Path) -> None:
    uri = str(tmp_path / "final" / "reviewed.csv")
    store = DecisionStore(uri, ["a", "b"])
    store.decide("a", "sad")
    store.decide("b", "unusable")
    store.decide("a", "happy")
    table = pd.read_csv(uri, dtype=str)
    assert list(table.columns) == ["video_id", "label", "decided_at"]
    assert table.set_index("video_id")["label"].to_dict() == {"a": "happy", "b": "unusable"}
    before = Path(uri).read_bytes()
    for video_id, label in (("a", "furious"), ("a", ""), ("nobody", "sad")):
        with pytest.raises(DecisionError):
            store.decide(video_id, label)
    assert Path(uri).read_bytes() == before
    # finalize reads every decision; the unusable clip is then left out of training.
    assert reviewed_labels(uri).to_dict() == {"a": "happy", "b": "unusable"}


def test_a_hand_edited_table_keeps_the_latest_decision(tmp_path: Path) -> None:
    path = tmp_path / "reviewed.csv"
    path.write_text(
        "video_id,label,decided_at\na,sad,2026-01-02T00:00:00\na,happy,2026-01-01T00:00:00\nb,,\n"
    )
    assert read_decision_table(str(path))[["video_id", "label"]].values.tolist() == [["a", "sad"]]
    path.write_text("video_id,label\na,happy\nb,glad\n")
    with pytest.raises(ValueError, match="row 2 \\(b\\): 'glad'"):
        read_decision_table(str(path))


def test_the_pipeline_picks_up_the_decisions(run_dir: Path) -> None:
    cfg = config(run_dir)
    assert with_review_decisions(cfg).finalize.relabel.reviewed is None
    Path(reviewed_path(str(run_dir))).write_text("video_id,label,decided_at\nc0,sad,x\n")
    assert with_review_decisions(cfg).finalize.relabel.reviewed == reviewed_path(str(run_dir))
    given = config(run_dir, "finalize.relabel.reviewed=/elsewhere.csv")
    assert with_review_decisions(given).finalize.relabel.reviewed == "/elsewhere.csv"


def serve(review: Review, store: DecisionStore, check) -> None:
    """Run ``check(client)`` against the app on a loopback test server."""

    async def main() -> None:
        async with TestClient(TestServer(build_app(review, store, TOKEN), host="127.0.0.1")) as client:
            await check(client)

    asyncio.run(main())


def test_routes_need_the_token_and_refuse_bad_labels(run_dir: Path) -> None:
    review = load_review(config(run_dir))
    store = DecisionStore(reviewed_path(str(run_dir)), [i["video_id"] for i in review.items])
    t = {"token": TOKEN}

    async def check(client: TestClient) -> None:
        for path in ("/", "/api/state", "/video/c0", "/static/app.js"):
            assert (await client.get(path)).status == 403
            assert (await client.get(path, params={"token": "wrong"})).status == 403
        assert (await client.post("/api/decide", json={"video_id": "c0", "label": "sad"})).status == 403
        page = await client.get("/", params=t)
        assert page.status == 200 and f"app.js?token={TOKEN}" in await page.text()
        assert (await client.get("/static/app.js", params=t)).status == 200

        for body in (
            {"video_id": "c0", "label": "furious"},
            {"video_id": "c0"},
            {"video_id": "ghost", "label": "sad"},
        ):
            assert (await client.post("/api/decide", params=t, json=body)).status == 400
        assert (await client.post("/api/decide", params=t, data=b"not json")).status == 400
        assert not Path(store.uri).exists()

        ok = await client.post(
            "/api/decide", headers={"X-Review-Token": TOKEN}, json={"video_id": "c2", "label": "unusable"}
        )
        assert ok.status == 200 and (await ok.json())["label"] == "unusable"
        state = await (await client.get("/api/state", params=t)).json()
        assert state["decisions"]["c2"]["label"] == "unusable" and len(state["items"]) == 3
        assert state["problems"] == review.problems and state["choices"][-1] == "unusable"

        ranged = await client.get("/video/c0", params=t, headers={"Range": "bytes=100-199"})
        assert ranged.status == 206 and await ranged.read() == VIDEO[100:200]
        assert (await client.get("/video/c4", params=t)).status == 404  # its video is missing

    serve(review, store, check)


def test_a_clip_on_s3_is_served_in_ranges(s3_env: str, tmp_path: Path) -> None:
    fs, _ = storage.get_fs("s3://review-bucket")
    fs.mkdir("review-bucket")
    storage.write_bytes("s3://review-bucket/video/c0.mp4", VIDEO)
    review = Review(items=[], problems=[], rerun="", videos={"c0": "s3://review-bucket/video/c0.mp4"})
    store = DecisionStore(str(tmp_path / "reviewed.csv"), [])
    t = {"token": TOKEN}

    async def check(client: TestClient) -> None:
        whole = await client.get("/video/c0", params=t)
        assert whole.status == 200 and whole.headers["Accept-Ranges"] == "bytes"
        assert whole.content_type == "video/mp4" and await whole.read() == VIDEO
        part = await client.get("/video/c0", params=t, headers={"Range": "bytes=1000-"})
        assert (
            part.status == 206
            and part.headers["Content-Range"] == f"bytes 1000-{len(VIDEO) - 1}/{len(VIDEO)}"
        )
        assert await part.read() == VIDEO[1000:]
        tail = await client.get("/video/c0", params=t, headers={"Range": "bytes=-10"})
        assert tail.status == 206 and await tail.read() == VIDEO[-10:]
        beyond = await client.get("/video/c0", params=t, headers={"Range": f"bytes={len(VIDEO) + 5}-"})
        assert beyond.status == 416

    serve(review, store, check)
