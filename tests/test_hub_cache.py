"""Checkpoints loaded as the default ids' repos publish them: like the real repos, CLIP ships
``model.safetensors``; HuBERT and RoBERTa ship only ``pytorch_model.bin`` (RoBERTa as hfl publishes it: a
BertForMaskedLM, keys prefixed ``bert.``). The whole offline path, ``ecmf prepare`` + ``ecmf extract`` through
the default ids in a cache laid out as huggingface_hub writes one, runs in tests/extract/test_workstation.py.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from ecmf_ray import hub
from ecmf_ray.testing.hf_cache import bin_bytes


def folder_files(folder: str, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    return {n: Path(folder, n).read_bytes() for n in sorted(os.listdir(folder)) if n not in skip}


def hubert_files(tiny_cache: str) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """HuBERT as TencentGameMate publishes it: config, preprocessor config, pytorch_model.bin only.

    hub.py's tiny recipe with 24 layers, so that the base config's layers 16-21 exist.
    """
    from transformers import HubertConfig, HubertModel

    with hub._seeded(0):
        model = HubertModel(HubertConfig(**{**hub._HUBERT["tiny"], "num_hidden_layers": 24}))
    state = model.state_dict()
    tiny = hub.resolve_model_ref("tiny:hubert", tiny_cache)
    files = {
        "config.json": model.config.to_json_string().encode(),
        "preprocessor_config.json": Path(tiny, "preprocessor_config.json").read_bytes(),
        "pytorch_model.bin": bin_bytes(state),
    }
    return files, state


def roberta_files(tiny_cache: str) -> tuple[dict[str, bytes], dict[str, torch.Tensor]]:
    """RoBERTa as hfl publishes it: a BertForMaskedLM .bin, its config and the tokenizer files."""
    from transformers import BertConfig, BertForMaskedLM

    with hub._seeded(0):
        model = BertForMaskedLM(BertConfig(**hub._bert_dims("tiny"), architectures=["BertForMaskedLM"]))
    state = model.state_dict()
    assert all(k.startswith(("bert.", "cls.")) for k in state)
    tiny = hub.resolve_model_ref("tiny:roberta", tiny_cache)
    files = folder_files(tiny, skip=("model.safetensors", "config.json"))
    files |= {"config.json": model.config.to_json_string().encode(), "pytorch_model.bin": bin_bytes(state)}
    return files, state


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("tiny-models"))


class RunsCode:
    """A pickle payload: unpickling it creates a folder (stands for any code an attacker wants run)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def local_folder(path: Path, files: dict[str, bytes]) -> str:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return str(path)


def test_bin_only_checkpoints_load_in_place(tmp_path: Path, tiny_cache: str, monkeypatch) -> None:
    monkeypatch.delenv("DISABLE_SAFETENSORS_CONVERSION", raising=False)
    files, state = hubert_files(tiny_cache)
    model, extractor = hub.load_hubert(local_folder(tmp_path / "hubert", files), tiny_cache)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert extractor.sampling_rate == 16000
    # Set by the load: transformers must not start its safetensors "auto_conversion" Hub thread.
    assert os.environ["DISABLE_SAFETENSORS_CONVERSION"] == "1"

    files, state = roberta_files(tiny_cache)
    model, tokenizer = hub.load_roberta(local_folder(tmp_path / "roberta", files), tiny_cache)
    assert type(model).__name__ == "BertModel"
    body = {k.removeprefix("bert."): v for k, v in state.items() if k.startswith("bert.")}
    assert body and all(torch.equal(model.state_dict()[k], v) for k, v in body.items())
    assert tokenizer.unk_token_id not in tokenizer("我今天很开心")["input_ids"]


def test_a_pickle_that_runs_code_is_refused(tmp_path: Path, tiny_cache: str) -> None:
    files, _ = hubert_files(tiny_cache)
    marker = tmp_path / "the-payload-ran"
    evil = bin_bytes({"feature_projection.projection.weight": RunsCode(marker)})
    folder = local_folder(tmp_path / "evil", files | {"pytorch_model.bin": evil})
    with pytest.raises((pickle.UnpicklingError, OSError, RuntimeError), match="(?i)weights.only"):
        hub.load_hubert(folder, tiny_cache)
    assert not marker.exists()
    # The payload is live: an unrestricted torch.load would have run it.
    torch.load(io.BytesIO(evil), weights_only=False)
    assert marker.is_dir()


def test_safetensors_win_over_a_bin(tmp_path: Path, tiny_cache: str) -> None:
    """With both files present the .bin is never opened (here it would run code)."""
    files = folder_files(hub.resolve_model_ref("tiny:hubert", tiny_cache))
    marker = tmp_path / "the-payload-ran"
    files["pytorch_model.bin"] = bin_bytes({"x": RunsCode(marker)})
    model, _ = hub.load_hubert(local_folder(tmp_path / "both", files), tiny_cache)
    assert model.config.num_hidden_layers == 4 and not marker.exists()
