"""The fold progress lines: counts, per-fold epoch / best WAF / ETA, plain text, at most one per interval."""

from types import SimpleNamespace

from ecmf_ray.train.progress import FoldProgress, format_duration


def trial(fold: int) -> SimpleNamespace:
    return SimpleNamespace(config={"fold": fold})


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.6, 95, 4000)] == ["0s", "1m00s", "1m35s", "1h06m"]


def test_lines_count_folds_and_estimate_from_each_folds_pace():
    lines: list[str] = []
    now = [0.0]
    progress = FoldProgress(
        "train ecmf", total=3, max_epochs=100, interval_s=10, emit=lines.append, clock=lambda: now[0]
    )
    progress.on_trial_result(0, [], trial(0), {"epoch": 5, "best_waf": 0.4})
    assert lines == ["train ecmf: 0/3 folds done, 1 running, 2 waiting | fold0 epoch 5/100 best 0.400 eta ?"]
    now[0] = 5.0  # within the interval: no line
    progress.on_trial_result(0, [], trial(1), {"epoch": 5, "best_waf": 0.3})
    assert len(lines) == 1
    now[0] = 20.0  # fold0: 5 more epochs in 20 s -> 4 s per epoch, 90 to go
    progress.on_trial_result(0, [], trial(0), {"epoch": 10, "best_waf": 0.5})
    assert lines[-1] == (
        "train ecmf: 0/3 folds done, 2 running, 1 waiting | fold0 epoch 10/100 best 0.500 eta ≤6m00s"
        " | fold1 epoch 5/100 best 0.300 eta ?"
    )
    progress.on_trial_complete(0, [], trial(0))  # a finished fold always gets a line
    assert (
        lines[-1] == "train ecmf: 1/3 folds done, 1 running, 1 waiting | fold1 epoch 5/100 best 0.300 eta ?"
    )
    assert all("\r" not in line and "\x1b" not in line for line in lines)
