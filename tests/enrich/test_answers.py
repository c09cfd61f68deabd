"""Validation of answers: strict JSON, a label among the six classes, bad answers become errors."""

from __future__ import annotations

import pytest

from ecmf_ray.enrich.answers import Answer, parse_answer


def test_valid_answer() -> None:
    raw = '{"label": "Happy ", "keywords": ["开心", " 笑 "], "description": "语气轻快"}'
    assert parse_answer(raw) == Answer(label="happy", keywords="开心, 笑", description="语气轻快")


def test_markdown_fence_is_tolerated_and_fields_are_optional() -> None:
    assert parse_answer('```json\n{"label": "sad"}\n```') == Answer(label="sad", keywords="", description="")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"label": "angry", "keywords": ["生气"', "not valid JSON"),
        ("I think the speaker is angry.", "not valid JSON"),
        ('["angry"]', "not an object"),
        ('{"label": "excited"}', "'excited' is not one of"),
        ('{"keywords": ["x"]}', "None is not one of"),
        ('{"label": "angry", "keywords": [1, 2]}', "keywords must be"),
        ('{"label": "angry", "description": {"a": 1}}', "description must be"),
    ],
)
def test_invalid_answers_are_errors(raw: str, message: str) -> None:
    answer = parse_answer(raw)
    assert answer.label is None and answer.keywords is None
    assert message in answer.error


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # The description was cut mid-string: dropped; what came before it is kept.
        ('{"label": "Sad", "keywords": ["难过", "哭"], "description": "她低着头，声音',
         Answer(label="sad", keywords="难过, 哭", description="", truncated=True)),
        # A list cut mid-item keeps its complete items; a fence that never closed is tolerated.
        ('```json\n{"label": "angry", "keywords": ["生气", "吵', Answer(label="angry", keywords="生气", description="",
                                                                     truncated=True)),
        ('{"label": "happy"}', Answer(label="happy", keywords="", description="", truncated=True)),
    ],
)  # fmt: skip
def test_a_cut_answer_keeps_the_fields_it_completed(raw: str, expected: Answer) -> None:
    assert parse_answer(raw, truncated=True) == expected


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"lab', "before any field was complete"),
        ('{"label": "excited", "keywords": ["x', "'excited' is not one of"),
        ("I think", "not valid JSON"),
    ],
)
def test_a_cut_answer_with_nothing_usable_is_an_error(raw: str, message: str) -> None:
    answer = parse_answer(raw, truncated=True)
    assert answer.truncated and answer.label is None and message in answer.error
