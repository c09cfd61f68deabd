"""The fold progress lines: counts, per-fold epoch / best WAF / ETA, the batch's ETA, plain text, at most one
per interval."""

from ecmf_ray.train.progress import FoldProgress, format_duration


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 95, 4000)] == ["0s", "1m00s", "1m35s", "1h06m"]


def test_lines_count_folds_and_estimate_from_each_folds_pace():
    lines: list[str] = []
    now = [0.0]
    progress = FoldProgress(
        "train ecmf",
        [(0, 0), (0, 1), (0, 2)],
        ["ecmf"],
        max_epochs=100,
        interval_s=10,
        emit=lines.append,
        clock=lambda: now[0],
    )
    progress.on_report((0, 0), {"epoch": 5, "best_waf": 0.4})
    assert lines == ["train ecmf: 0/3 folds done, 1 running, 2 waiting | fold0 epoch 5/100 best 0.400 eta ?"]
    now[0] = 5.0  # within the interval: no line
    progress.on_report((0, 1), {"epoch": 5, "best_waf": 0.3})
    assert len(lines) == 1
    now[0] = 20.0  # fold0: 5 more epochs in 20 s -> 4 s per epoch, 90 to go
    progress.on_report((0, 0), {"epoch": 10, "best_waf": 0.5})
    # The batch: 90 + 95 epochs running and 100 waiting at 4 s each, over the 2 folds running.
    assert lines[-1] == (
        "train ecmf: 0/3 folds done, 2 running, 1 waiting, eta ≤9m30s | fold0 epoch 10/100 best 0.500 eta ≤6m00s"
        " | fold1 epoch 5/100 best 0.300 eta ?"
    )
    progress.on_done((0, 0))  # a finished fold always gets a line
    assert (
        lines[-1] == "train ecmf: 1/3 folds done, 1 running, 1 waiting | fold1 epoch 5/100 best 0.300 eta ?"
    )
    assert all("\r" not in line and "\x1b" not in line for line in lines)


def test_a_batch_of_experiments_leads_with_experiments_done_running_waiting():
    lines: list[str] = []
    now = [0.0]
    # Three experiments of two folds (experiment 1's fold 0 was done before: not a task).
    tasks = [(0, 0), (2, 0), (0, 1), (1, 1), (2, 1)]
    progress = FoldProgress(
        "finalize members", tasks, ["ecmf", "seed1", "no_face"], 10, interval_s=0, emit=lines.append,
        clock=lambda: now[0],
    )  # fmt: skip
    progress.on_report((0, 0), {"epoch": 2, "best_waf": 0.5})
    progress.on_report((1, 1), {"epoch": 2, "best_waf": 0.25})
    now[0] = 10.0
    progress.on_report((0, 0), {"epoch": 4, "best_waf": 0.5})  # 5 s per epoch
    assert lines[-1] == (
        "finalize members: 0/3 experiments done, 2 running, 1 waiting; 0/5 folds, eta ≤1m50s"
        " | ecmf/fold0 epoch 4/10 best 0.500 eta ≤30s | seed1/fold1 epoch 2/10 best 0.250 eta ?"
    )
    progress.on_done((1, 1))
    progress.on_done((0, 0))
    # seed1 is done; ecmf has a fold done and one to go: started, not done.
    assert lines[-1] == "finalize members: 1/3 experiments done, 1 running, 1 waiting; 2/5 folds"
