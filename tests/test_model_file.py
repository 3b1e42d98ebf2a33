"""The jmp-ase model file: exact round trip, safe loading, and clear errors for bad files."""
import zipfile

import numpy as np
import pytest
import torch

from jmp_ase import __version__
from jmp_ase.io.model_file import FORMAT_VERSION, checksum, load_model, model_to_dict, save_model
from jmp_ase.nn.heads import HeadSpec
from jmp_ase.keys import UNITS
from jmp_ase.nn.model import ModelConfig
from models import methanol, tiny_model, triclinic_crystal

HEADS = [
    HeadSpec("energy", scale=0.3, shift=-1.5, element_references={1: -13.6, 6: -1030.0, 8: -2040.5}),
    HeadSpec("gap", "scalar", "mean", scale=1.7, shift=4.0),
]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = tiny_model(seed=5, heads=HEADS)
    model.model_config.provenance.update({"parent": "jmp-s.pt", "data": "rMD17 aspirin, 950 structures"})
    path = tmp_path_factory.mktemp("model") / "model.ckpt"
    save_model(model, path)
    return model, path


def predictions(model):
    from jmp_ase.data.batch import batch_from_atoms

    dtype = next(model.parameters()).dtype
    batch = batch_from_atoms([methanol(), triclinic_crystal()], model.graph_settings, dtype=dtype)
    return {k: v.detach() for k, v in model(batch, compute_stress=True).items()}


def test_round_trip_is_exact(saved):
    model, path = saved
    loaded = load_model(path)
    assert loaded.model_config == model.model_config
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    ours, theirs = predictions(model), predictions(loaded)
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_file_describes_the_model(saved):
    _, path = saved
    content = torch.load(path, weights_only=True)
    assert content["format"] == "jmp-ase-model" and content["format_version"] == FORMAT_VERSION
    config = content["config"]
    assert config["units"] == UNITS
    assert config["cutoff"] == 4.0 and config["max_neighbors"] == 100
    assert config["elements"] == [1, 6, 7, 8, 11, 14, 17]
    assert config["heads"][0]["element_references"] == {1: -13.6, 6: -1030.0, 8: -2040.5}
    assert config["heads"][1]["reduction"] == "mean" and config["heads"][1]["scale"] == 1.7
    prov = config["provenance"]
    assert prov["parent"] == "jmp-s.pt" and prov["data"].startswith("rMD17")
    assert prov["jmp_ase_version"] == __version__ and prov["saved"][:2] == "20"


def test_float64_model_stays_float64(tmp_path):
    model = tiny_model(seed=6).double()
    save_model(model, tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    assert next(loaded.parameters()).dtype == torch.float64
    assert torch.equal(predictions(model)["energy"], predictions(loaded)["energy"])


def test_provenance_must_be_plain(tmp_path):
    model = tiny_model(seed=6)
    model.model_config.provenance["steps"] = np.int64(3)
    model.model_config.provenance["where"] = tmp_path
    with pytest.raises(ValueError, match=r"provenance'\]\['where'\] is a \w*Path"):
        save_model(model, tmp_path / "m.ckpt")
    assert not (tmp_path / "m.ckpt").exists()


def write(path, content):
    torch.save(content, path)
    return path


def resealed(content):
    """Content with a freshly computed checksum (a consistent but wrong file)."""
    content["checksum"] = checksum(content["config"], content["state_dict"])
    return content


def test_truncated_and_garbage_files(saved, tmp_path):
    _, path = saved
    data = path.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt or of another kind"):
        load_model(tmp_path / "cut.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a model" * 10)
    with pytest.raises(ValueError, match="not a readable jmp-ase model file"):
        load_model(tmp_path / "junk.ckpt")


def test_damaged_weights_fail_the_checksum(saved, tmp_path):
    _, path = saved
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.file_size)
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    data[start + record.file_size // 2] ^= 0x10
    (tmp_path / "flipped.ckpt").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt model file, the checksum .* expected sha256:"):
        load_model(tmp_path / "flipped.ckpt")


def test_wrong_format_and_version(saved, tmp_path):
    model, _ = saved
    with pytest.raises(ValueError, match=r"not a jmp-ase model file \(expected a dict with format='jmp-ase-model'"):
        load_model(write(tmp_path / "other.pt", {"model": torch.zeros(2)}))
    content = model_to_dict(model)
    content["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=f"version {FORMAT_VERSION + 1}.*reads only version {FORMAT_VERSION}.*Upgrade"):
        load_model(write(tmp_path / "new.ckpt", content))
    content = model_to_dict(model)
    del content["state_dict"]
    with pytest.raises(ValueError, match=r"entries \['state_dict'\] are missing"):
        load_model(write(tmp_path / "partial.ckpt", content))


def test_original_jmp_checkpoint_is_pointed_elsewhere(reference_dir):
    with pytest.raises(ValueError, match="from_jmp_checkpoint"):
        load_model(reference_dir / "jmp-tiny-pretrain.ckpt")


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    model, _ = saved
    content = model_to_dict(model)
    content["config"]["backbone"]["emb_size_atom"] = 16
    with pytest.raises(ValueError, match="weights do not match the model configuration"):
        load_model(write(tmp_path / "mismatch.ckpt", resealed(content)))
    content = model_to_dict(model)
    content["state_dict"]["heads.energy.mlp.0.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weights \['heads.energy.mlp.0.weight'\] contain NaN"):
        load_model(write(tmp_path / "nan.ckpt", resealed(content)))
    content = model_to_dict(model)
    content["config"]["colour"] = "blue"
    with pytest.raises(ValueError, match="corrupt model configuration.*'colour'"):
        load_model(write(tmp_path / "key.ckpt", resealed(content)))


def test_config_round_trip_and_validation(saved):
    model, _ = saved
    config = model.model_config
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="may not be named"):
        ModelConfig(config.backbone, [HeadSpec("energy"), HeadSpec("stress", "scalar")])
    with pytest.raises(ValueError, match="outside 1..120"):
        ModelConfig(config.backbone, [HeadSpec("energy")], elements=[0, 1])


def test_saved_file_has_ordinary_permissions(tmp_path):
    import os
    import stat

    from jmp_ase.io.model_file import atomic_torch_save

    mask = os.umask(0o022)
    try:
        atomic_torch_save({"x": 1}, tmp_path / "m.ckpt")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.ckpt").stat().st_mode) == 0o644
