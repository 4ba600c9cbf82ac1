"""DCFM checkpoints: safetensors round trip, float16 storage, atomic writes, and every bad file
failing with a CheckpointError that names the file and says what is wrong."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from dcfm_ros.model import (
    CheckpointError,
    DCFMConfig,
    build_model,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
)

H, W = 64, 96
NAMES = ("road", "car", "person", "sky", "tree")
PALETTE = ((128, 64, 128), (0, 0, 142), (220, 20, 60), (70, 130, 180), (107, 142, 35))


def make_model(num_classes: int = 5, seed: int = 0):
    torch.manual_seed(seed)
    cfg = DCFMConfig(backbone="efficientnet-lite0", num_classes=num_classes, class_names=NAMES[:num_classes],
                     palette=PALETTE[:num_classes], input_size=(H, W), head="conv")
    model = build_model(cfg)
    # Move BN statistics away from their defaults so the round trip checks them too.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, H, W))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(42)
    return torch.randn(1, 3, H, W)


def _metadata(model, **override) -> dict[str, str]:
    meta = {"format": "dcfm_ros", "format_version": "1", "dcfm_config": json.dumps(model.config.to_dict()),
            "extra": "{}", "dtype": "float32"}
    meta.update(override)
    return meta


def _tensors(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}


def test_round_trip(tmp_path: Path, model, x) -> None:
    path = tmp_path / "dcfm.safetensors"
    save_checkpoint(path, model, extra={"iteration": 1200, "miou": 0.61, "dataset": "camvid"})
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    assert loaded.config == model.config
    assert loaded.config.class_names == NAMES and loaded.config.palette == PALETTE
    assert meta["extra"] == {"iteration": 1200, "miou": 0.61, "dataset": "camvid"}
    assert meta["format_version"] == "1" and meta["dtype"] == "float32"
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        _, f_co, _ = loaded.forward_key(x)
        torch.testing.assert_close(loaded.forward_nonkey(x, f_co)[0], model.forward_nonkey(x, f_co)[0],
                                   rtol=0, atol=0)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # The metadata alone is readable without building the model.
    assert read_checkpoint_meta(path)["config"] == model.config
    # Only the file itself is left in the directory (the temp file was renamed over it).
    assert [p.name for p in tmp_path.iterdir()] == ["dcfm.safetensors"]


def test_float16_storage(tmp_path: Path, model, x) -> None:
    full = tmp_path / "full.safetensors"
    half = tmp_path / "half.safetensors"
    save_checkpoint(full, model)
    save_checkpoint(half, model, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    loaded, meta = load_checkpoint(half)
    assert meta["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(loaded(x), ref, rtol=0, atol=2e-3 * ref.abs().max().item() + 1e-4)


def test_float16_refuses_values_out_of_range(tmp_path: Path) -> None:
    big = make_model()
    with torch.no_grad():
        big.head.cls.bias[0] = 1e6
    path = tmp_path / "big.safetensors"
    with pytest.raises(CheckpointError, match=r"float16.*head\.cls\.bias"):
        save_checkpoint(path, big, half=True)
    assert not path.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write(tmp_path: Path, model) -> None:
    # Target directory missing: clear error, nothing created anywhere.
    missing_dir = tmp_path / "no" / "such" / "dir" / "m.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(missing_dir, model)
    assert list(tmp_path.iterdir()) == []

    # Failure after the data was written (the target is a directory, the rename fails): the temp
    # file is removed.
    target_dir = tmp_path / "taken.safetensors"
    target_dir.mkdir()
    with pytest.raises(CheckpointError, match=re.escape(str(target_dir))):
        save_checkpoint(target_dir, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.safetensors"]

    # A failed save over a good checkpoint leaves the good one untouched.
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, model, extra={"v": 1})
    before = good.read_bytes()
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        save_checkpoint(good, model, extra={"v": object()})
    assert good.read_bytes() == before
    # A successful overwrite replaces it and leaves no temp file.
    save_checkpoint(good, model, extra={"v": 2})
    assert load_checkpoint(good)[1]["extra"] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors", "taken.safetensors"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError, match="not found: " + re.escape(str(path))):
        load_checkpoint(path)


def test_truncated_file(tmp_path: Path, model) -> None:
    path = tmp_path / "cut.safetensors"
    save_checkpoint(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*truncated"):
        load_checkpoint(path)


def test_not_a_safetensors_file(tmp_path: Path, model) -> None:
    noise = tmp_path / "noise.safetensors"
    noise.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                    dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match=re.escape(str(noise)) + ".*not a readable safetensors"):
        load_checkpoint(noise)
    pth = tmp_path / "model.pth"
    torch.save(model.state_dict(), pth)
    with pytest.raises(CheckpointError, match=re.escape(str(pth)) + ".*not a readable safetensors"):
        load_checkpoint(pth)


def test_safetensors_file_that_is_not_a_dcfm_checkpoint(tmp_path: Path, model) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file(_tensors(model), str(plain))  # no metadata at all
    with pytest.raises(CheckpointError, match="not a dcfm_ros checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.safetensors"
    save_file(_tensors(model), str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a dcfm_ros checkpoint"):
        load_checkpoint(other)


def test_unknown_format_version(tmp_path: Path, model) -> None:
    path = tmp_path / "v9.safetensors"
    save_file(_tensors(model), str(path), metadata=_metadata(model, format_version="9"))
    with pytest.raises(CheckpointError, match="unsupported dcfm_ros checkpoint format_version '9'"):
        load_checkpoint(path)


@pytest.mark.parametrize(("config_json", "message"), [
    ("{not json", "bad model config"),
    (json.dumps({"backbone": "efficientnet-lite0"}), r"missing required key"),
    (json.dumps({"backbone": "vgg", "num_classes": 1, "class_names": ["a"], "palette": [[0, 0, 0]],
                 "input_size": [8, 8]}), "backbone 'vgg' is unknown"),
])
def test_bad_config(tmp_path: Path, model, config_json: str, message: str) -> None:
    path = tmp_path / "badcfg.safetensors"
    save_file(_tensors(model), str(path), metadata=_metadata(model, dcfm_config=config_json))
    with pytest.raises(CheckpointError, match=re.escape(str(path)) + ".*" + message):
        load_checkpoint(path)


def test_weights_not_matching_config(tmp_path: Path, model) -> None:
    tensors = _tensors(model)
    del tensors["ffm.conv.weight"]
    tensors["decoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "mismatch.safetensors"
    save_file(tensors, str(path), metadata=_metadata(model))
    with pytest.raises(CheckpointError,
                       match=r"missing: ffm\.conv\.weight.*unexpected: decoder\.extra\.weight"):
        load_checkpoint(path)

    # Config says 3 classes, tensors have 5: the head shapes do not match.
    three = make_model(num_classes=3)
    path2 = tmp_path / "classes.safetensors"
    three_json = json.dumps(three.config.to_dict())
    save_file(_tensors(model), str(path2), metadata=_metadata(model, dcfm_config=three_json))
    with pytest.raises(CheckpointError,
                       match=r"shape mismatch: head\.cls\.bias \(file \(5,\), model \(3,\)\)"):
        load_checkpoint(path2)


def test_wrong_class_count(tmp_path: Path, model) -> None:
    path = tmp_path / "five.safetensors"
    save_checkpoint(path, model)
    with pytest.raises(CheckpointError, match="has 5 classes, expected 11"):
        load_checkpoint(path, expected_num_classes=11)
    assert load_checkpoint(path, expected_num_classes=5)[0].config.num_classes == 5


def test_save_refuses_a_non_dcfm_module(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no DCFMConfig"):
        save_checkpoint(tmp_path / "x.safetensors", torch.nn.Linear(2, 2))
    assert list(tmp_path.iterdir()) == []
