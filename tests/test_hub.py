"""Model references: tiny models, local folders, s3:// folders (against a local moto S3 server)."""

from __future__ import annotations

import os

# Tests never touch the Hugging Face Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ecmf_ray import hub, storage

CLIP_PROJ, TINY_HIDDEN = 48, 64


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One cache for the module, so each tiny model is built once."""
    return str(tmp_path_factory.mktemp("model-cache"))


def _weights(folder: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_tiny_clip_round_trip(cache_dir: str) -> None:
    model, processor = hub.load_clip("tiny:clip", cache_dir)
    assert type(model).__name__ == "CLIPVisionModelWithProjection"
    assert not model.training
    images = [np.random.default_rng(i).integers(0, 255, (180, 320, 3), dtype=np.uint8) for i in range(3)]
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (3, 3, 224, 224)
    with torch.inference_mode():
        out = model(**inputs)
    assert out.image_embeds.shape == (3, CLIP_PROJ)
    assert out.last_hidden_state.shape == (3, 1 + (224 // 32) ** 2, TINY_HIDDEN)
    # A full CLIPModel checkpoint (vision + text), like the OpenAI one.
    assert any(k.startswith("text_model.") for k in _weights(hub.resolve_model_ref("tiny:clip", cache_dir)))


def test_clip_missing_vision_weight_raises(cache_dir: str, tmp_path) -> None:
    """A checkpoint without a vision weight fails loudly instead of loading a random tensor."""
    source = hub.resolve_model_ref("tiny:clip", cache_dir)
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(os.path.join(source, name), tmp_path / name)
    weights = _weights(source)
    del weights["visual_projection.weight"]
    save_file(weights, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="visual_projection"):
        hub.load_clip(str(tmp_path), cache_dir)


def test_tiny_hubert_round_trip(cache_dir: str) -> None:
    model, extractor = hub.load_hubert("tiny:hubert", cache_dir)
    assert extractor.sampling_rate == 16000 and extractor.do_normalize and extractor.return_attention_mask
    waves = [np.random.default_rng(0).standard_normal(16000).astype(np.float32), np.zeros(8000, np.float32)]
    inputs = extractor(waves, sampling_rate=16000, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True)
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1 == 5
    # Real conv strides: 1 s of 16 kHz audio gives ~50 frames.
    assert out.hidden_states[-1].shape == (2, 49, TINY_HIDDEN)


def test_tiny_roberta_round_trip(cache_dir: str) -> None:
    model, tokenizer = hub.load_roberta("tiny:roberta", cache_dir)
    assert type(model).__name__ == "BertModel"
    text = "我今天很开心"
    ids = tokenizer(text)["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["[CLS]", *text, "[SEP]"]
    assert tokenizer.unk_token_id not in tokenizer("Hello, 世界！123")["input_ids"]
    assert tokenizer.model_max_length == 512
    batch = tokenizer([text, "好"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 5
    assert out.last_hidden_state.shape == (2, len(text) + 2, TINY_HIDDEN)
    assert out.pooler_output.shape == (2, TINY_HIDDEN)
    assert os.path.isfile(os.path.join(hub.resolve_model_ref("tiny:roberta", cache_dir), "vocab.txt"))


def test_dtype_and_eval_mode(cache_dir: str) -> None:
    model, _ = hub.load_hubert("tiny:hubert", cache_dir, dtype="bf16")
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert hub.torch_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match="float64"):
        hub.torch_dtype("float64")


@pytest.mark.parametrize("kind", hub.MODEL_KINDS)
def test_tiny_build_is_deterministic(kind: str, cache_dir: str, tmp_path) -> None:
    first = _weights(hub.resolve_model_ref(f"tiny:{kind}", cache_dir))
    second = _weights(hub.resolve_model_ref(f"tiny:{kind}", str(tmp_path)))
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_concurrent_tiny_builds_agree(tmp_path) -> None:
    """Threads racing on one cache get one complete folder (the lock serialises the build)."""
    with ThreadPoolExecutor(4) as pool:
        paths = list(pool.map(lambda _: hub.resolve_model_ref("tiny:hubert", str(tmp_path)), range(4)))
    assert len(set(paths)) == 1
    folder = f"hubert-{hub.tiny_recipe_key('hubert')}"
    assert sorted(os.listdir(os.path.dirname(paths[0]))) == [folder, f"{folder}.lock"]


def test_local_folder_and_tilde_cache(cache_dir: str, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    folder = hub.resolve_model_ref("tiny:roberta", cache_dir)
    assert hub.resolve_model_ref(folder, cache_dir) == folder
    model, _ = hub.load_roberta(folder, cache_dir)
    assert model.config.hidden_size == TINY_HIDDEN
    # Relative paths and a ~-prefixed cache dir.
    monkeypatch.chdir(os.path.dirname(folder))
    assert hub.resolve_model_ref(f"./{os.path.basename(folder)}", cache_dir) == folder
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hub.resolve_model_ref("tiny:clip", "~/cache").startswith(str(tmp_path / "cache"))


def test_hub_id_passes_through(cache_dir: str) -> None:
    for ref in ("openai/clip-vit-large-patch14", "TencentGameMate/chinese-hubert-large", "bert-base-chinese"):
        assert hub.resolve_model_ref(ref, cache_dir) == ref


@pytest.mark.parametrize(
    ("ref", "error"),
    [
        ("tiny:resnet", ValueError),
        ("http://example.com/model", ValueError),
        ("/no/such/model/folder", FileNotFoundError),
        ("./missing-model", FileNotFoundError),
        ("models/clip/v1", FileNotFoundError),
    ],
)
def test_bad_ref_errors_name_the_ref(ref: str, error: type[Exception], cache_dir: str) -> None:
    with pytest.raises(error, match=ref.replace(".", r"\.")):
        hub.resolve_model_ref(ref, cache_dir)


def test_folder_without_config_is_rejected(tmp_path, cache_dir: str) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        hub.resolve_model_ref(str(tmp_path), cache_dir)


def test_build_model_from_config_sizes() -> None:
    def count(kind: str) -> int:
        # Meta tensors: counting parameters of the real sizes costs no memory or init time.
        with torch.device("meta"):
            model = hub.build_model_from_config(kind, "real")
        return sum(p.numel() for p in model.parameters())

    assert 300e6 < count("clip") < 310e6  # ViT-L/14 vision tower + 768-d projection
    assert 310e6 < count("hubert") < 320e6  # HuBERT-Large
    assert 320e6 < count("roberta") < 330e6  # BERT-large body with a 21128-token vocab
    tiny = hub.build_model_from_config("clip", "tiny")
    assert tiny.config.projection_dim == CLIP_PROJ and not tiny.training
    with pytest.raises(ValueError, match="huge"):
        hub.build_model_from_config("clip", "huge")
    with pytest.raises(ValueError, match="resnet"):
        hub.build_model_from_config("resnet", "real")


# --- s3:// folders against moto's S3 server on loopback ---------------------------------------


def _upload_tiny(cache_dir: str, kind: str, uri: str) -> None:
    fs, path = storage.get_fs(uri)
    fs.makedirs(path.split("/", 1)[0], exist_ok=True)
    fs.put(hub.resolve_model_ref(f"tiny:{kind}", cache_dir), path, recursive=True)


def test_s3_folder_downloads_once_and_loads(
    s3_env: str, cache_dir: str, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri = "s3://models/encoders/tiny-roberta"
    _upload_tiny(cache_dir, "roberta", uri)
    downloads = []
    real_download = hub._download_folder

    def counting_download(ref: str, dest: str) -> None:
        downloads.append(ref)
        real_download(ref, dest)

    monkeypatch.setattr(hub, "_download_folder", counting_download)
    local_cache = str(tmp_path / "node-cache")
    # Several actors on one node asking at once: one download, one complete folder for all.
    with ThreadPoolExecutor(3) as pool:
        paths = set(pool.map(lambda _: hub.resolve_model_ref(uri, local_cache), range(3)))
    assert downloads == [uri] and len(paths) == 1
    folder = paths.pop()
    assert folder.startswith(local_cache)
    assert sorted(os.listdir(folder)) == sorted(os.listdir(hub.resolve_model_ref("tiny:roberta", cache_dir)))
    assert not [n for n in os.listdir(os.path.dirname(folder)) if ".tmp-" in n]

    # Gone from S3: the node copy still serves, without another download.
    storage.remove(uri, recursive=True)
    assert hub.resolve_model_ref(uri + "/", local_cache) == folder
    model, tokenizer = hub.load_roberta(uri, local_cache)
    assert downloads == [uri]
    assert model.config.hidden_size == TINY_HIDDEN
    assert tokenizer.unk_token_id not in tokenizer("我今天很开心")["input_ids"]


def test_s3_missing_folder_errors_and_leaves_nothing(s3_env: str, cache_dir: str, tmp_path) -> None:
    _upload_tiny(cache_dir, "hubert", "s3://models/hubert")
    with pytest.raises(FileNotFoundError, match="s3://models/nothing-here"):
        hub.resolve_model_ref("s3://models/nothing-here", str(tmp_path))
    assert not [n for n in os.listdir(tmp_path / "s3") if not n.endswith(".lock")]


def test_builds_leave_the_callers_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    hub.build_model_from_config("hubert", "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_a_changed_tiny_recipe_gets_a_cache_folder_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    keys = {kind: hub.tiny_recipe_key(kind) for kind in hub.MODEL_KINDS}
    assert len(set(keys.values())) == len(keys)
    assert hub.tiny_recipe_key("hubert") == keys["hubert"]  # stable while nothing changes
    # Sizes changed:
    monkeypatch.setitem(hub._HUBERT, "tiny", {**hub._HUBERT["tiny"], "num_hidden_layers": 5})
    assert hub.tiny_recipe_key("hubert") != keys["hubert"]
    assert hub.tiny_recipe_key("clip") == keys["clip"]
    monkeypatch.undo()

    # The builder's code changed:
    def saves_differently(folder: str) -> None:
        hub._save_tiny_hubert(folder)

    monkeypatch.setitem(hub._TINY_BUILDERS, "hubert", saves_differently)
    assert hub.tiny_recipe_key("hubert") != keys["hubert"]
    # A helper the builder calls changed:
    monkeypatch.setattr(hub, "tiny_bert_vocab", lambda: ["[PAD]", "[UNK]"])
    assert hub.tiny_recipe_key("roberta") != keys["roberta"]
