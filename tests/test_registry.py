"""Model registry: card validation, search path, sha256 checks, safe loading, MONAI bundle import.

Every model here is a tiny MONAI UNet (channels 4-8) with random weights written by the test.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from napari_medseg.errors import FileFormatError, IntegrityError, InvalidInputError
from napari_medseg.registry import (
    ModelCard,
    ModelSource,
    Registry,
    import_monai_bundle,
    load_model,
    load_model_folder,
    read_card,
    save_model_folder,
    sha256_file,
    shipped_models_dirs,
)

from _models import NET_PARAMS, registry_model, tiny_card, tiny_network, write_bundle


@pytest.fixture
def env_dirs(tmp_path, monkeypatch):
    """An empty user folder and one MEDSEG_MODELS folder, both under tmp_path."""
    user, env = tmp_path / "user", tmp_path / "env"
    env.mkdir()
    monkeypatch.setenv("MEDSEG_USER_MODELS", str(user))
    monkeypatch.setenv("MEDSEG_MODELS", str(env))
    return user, env


# ------------------------------------------------------------------------------------ round trip
def test_save_and_load_network_round_trip(tmp_path):
    net = tiny_network(seed=3)
    model = save_model_folder(tmp_path / "m", card=tiny_card(), state_dict=net.state_dict())
    weights = tmp_path / "m" / "model.safetensors"
    assert model.weights_path() == weights.resolve()
    assert model.sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.safetensors", "model.yaml"]
    assert read_card(tmp_path / "m" / "model.yaml") == model.card
    card = model.card
    assert (card.in_channels, card.out_channels, card.label_values) == (1, 2, [0, 1])
    assert card.orientation == "RAS" and card.authors == ["Test Author"]
    assert card.spacing == (0.8, 0.8, 2.5) and card.spacing_zyx == (2.5, 0.8, 0.8)
    loaded = model.load_network()
    assert not loaded.training
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))
    assert model.provenance()["model_sha256"] == model.sha256


def test_json_card_with_string_label_keys(tmp_path):
    model = registry_model(tmp_path / "m")
    data = json.loads(json.dumps(model.card.to_dict()))  # labels keys become "0", "1"
    (tmp_path / "m" / "model.yaml").unlink()
    (tmp_path / "m" / "model.json").write_text(json.dumps(data))
    again = load_model_folder(tmp_path / "m")
    assert again.card == model.card
    assert again.card_path.name == "model.json"


def test_load_pt_state_dict_and_checkpoint(tmp_path):
    net = tiny_network(seed=5)
    folder = tmp_path / "pt"
    folder.mkdir()
    torch.save({"model": net.state_dict(), "epoch": 7}, folder / "weights.pt")  # a training checkpoint
    card = tiny_card(weights={"file": "weights.pt", "sha256": sha256_file(folder / "weights.pt")})
    (folder / "model.yaml").write_text(yaml.safe_dump(card))
    loaded = load_model_folder(folder).load_network()
    x = torch.randn(1, 1, 8, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))


def test_to_monai_metadata(tmp_path):
    meta = registry_model(tmp_path / "m").card.to_monai_metadata()
    assert meta["name"] == "tiny" and meta["version"] == "1.0.0" and meta["authors"] == "Test Author"
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["modality"] == "CT" and image["format"] == "hounsfield"
    assert image["spatial_shape"] == [16, 16, 8]  # MONAI's (x, y, z) order
    assert pred["num_channels"] == 2 and pred["channel_def"] == {"0": "background", "1": "liver"}
    assert meta["eval_metrics"] == {"dice": 0.5}


# ------------------------------------------------------------------------------------ validation
INVALID_CARDS = [
    ("labels without 0", {"labels": {1: {"name": "a", "color": [1, 0, 0]}}}, "labels: must include 0"),
    ("colour above 1", {"labels": {0: {"name": "bg", "color": [0, 0, 2]}}}, "labels.0.color.2"),
    ("repeated label name", {"labels": {0: {"name": "a", "color": [0, 0, 0]}, 1: {"name": "a", "color": [0, 0, 0]}}},
     "label names must be unique"),
    ("patch size length", {"patch_size": [16, 16]}, "patch_size [16, 16] has 2 entries but spatial_dims is 3"),
    ("zero patch", {"patch_size": [0, 16, 16]}, "patch_size"),
    ("spatial dims 4", {"spatial_dims": 4}, "spatial_dims"),
    ("unknown field", {"lables": {}}, "lables: Extra inputs are not permitted (did you mean 'labels'"),
    ("bad orientation", {"orientation": "RAX"}, "orientation"),
    ("negative spacing", {"spacing": [1, -1, 1]}, "spacing"),
    ("ct window without centre", {"normalization": {"kind": "ct_window", "window_width": 400}}, "window_center"),
    ("unknown normalisation", {"normalization": {"kind": "zscroe"}}, "normalization.kind"),
    ("percentiles reversed", {"normalization": {"kind": "percentile", "lower_percentile": 99, "upper_percentile": 1}},
     "lower_percentile=99.0 must be below upper_percentile=1.0"),
    ("dropout rate 1", {"dropout": {"placement": ["decoder"], "rate": 1.0}}, "dropout.rate"),
    ("dropout place", {"dropout": {"placement": ["middle"], "rate": 0.1}}, "dropout.placement.0"),
    ("rate without place", {"architecture": {"name": "unet"}, "dropout": {"rate": 0.2}}, "dropout.placement is empty"),
    ("overlap 1", {"overlap": 1.0}, "overlap"),
    ("reserved param", {"architecture": {"name": "monai.UNet", "params": {"in_channels": 3}}},
     "architecture.params: in_channels must not be given here"),
    ("name with slash", {"name": "a/b"}, "name: 'a/b'"),
    ("no channels", {"channels": []}, "channels"),
    ("missing licence", {"license": None}, "license"),
]


@pytest.mark.parametrize("overrides, expected", [c[1:] for c in INVALID_CARDS], ids=[c[0] for c in INVALID_CARDS])
def test_invalid_card_names_the_field(tmp_path, overrides, expected):
    card = tiny_card(**overrides)
    with pytest.raises(InvalidInputError) as info:
        save_model_folder(tmp_path / "m", card=card, state_dict=tiny_network().state_dict())
    assert expected in str(info.value)
    assert not (tmp_path / "m").exists()


def test_invalid_card_sha_and_weights_suffix(tmp_path):
    model = registry_model(tmp_path / "m")
    card_path = tmp_path / "m" / "model.yaml"
    data = yaml.safe_load(card_path.read_text())
    for weights, expected in (
        ({"file": "model.safetensors", "sha256": "abc"}, "weights.sha256: Value error, 'abc' is not a sha256"),
        ({"file": "model.bin", "sha256": model.sha256}, "weights.file"),
    ):
        card_path.write_text(yaml.safe_dump({**data, "weights": weights}))
        with pytest.raises(InvalidInputError, match="weights") as info:
            read_card(card_path)
        assert expected.replace("Value error, ", "") in str(info.value)
        assert str(card_path) in str(info.value)


def test_invalid_card_files(tmp_path):
    with pytest.raises(FileFormatError, match="does not exist"):
        read_card(tmp_path / "nothing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(FileFormatError, match="not valid YAML"):
        read_card(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(InvalidInputError, match="must be a mapping"):
        read_card(bad)
    bad.write_text("a: &x [1, 2]\nb: *x\n")  # aliases are the "billion laughs" vector
    with pytest.raises(FileFormatError, match="aliases"):
        read_card(bad)
    with pytest.raises(FileFormatError, match="holds no card"):
        load_model_folder(tmp_path)


# ------------------------------------------------------------------------------------ security
def test_invalid_tampered_weights_refused(tmp_path):
    model = registry_model(tmp_path / "m")
    weights = model.weights_path()
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip one byte of the last tensor
    weights.write_bytes(bytes(data))
    actual = hashlib.sha256(bytes(data)).hexdigest()
    for call in (model.verify, model.load_state_dict, model.load_network):
        with pytest.raises(IntegrityError) as info:
            call()
        message = str(info.value)
        assert str(weights) in message and "sha256 mismatch" in message
        assert f"expected {model.sha256}" in message and f"actual {actual}" in message
    with pytest.raises(IntegrityError, match="model 'tiny'"):
        Registry([tmp_path]).verify()


@pytest.mark.parametrize(
    "file, content, expected",
    [
        ("model.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}", "not a valid safetensors file"),
        ("model.pt", b"PK\x03\x04 truncated zip", "not a readable PyTorch file"),
        ("model.pt", None, "holds no state dict"),
    ],
    ids=["garbage safetensors", "truncated pt", "pt without tensors"],
)
def test_invalid_corrupt_weights_with_matching_hash(tmp_path, file, content, expected):
    folder = tmp_path / "m"
    folder.mkdir()
    if content is None:
        torch.save({"epoch": 3, "lr": 0.1}, folder / file)
    else:
        (folder / file).write_bytes(content)
    card = tiny_card(weights={"file": file, "sha256": sha256_file(folder / file)})
    (folder / "model.yaml").write_text(yaml.safe_dump(card))
    model = load_model_folder(folder)
    model.verify()  # the bytes are those the card names; they just do not decode
    with pytest.raises(FileFormatError, match=expected) as info:
        model.load_network()
    assert str(folder / file) in str(info.value)


def test_invalid_missing_weights(tmp_path):
    model = registry_model(tmp_path / "m")
    model.weights_path().unlink()
    with pytest.raises(FileFormatError, match="is missing"):
        model.verify()


@pytest.mark.parametrize(
    "file, expected",
    [
        ("../outside.safetensors", "contains '..'"),
        ("/etc/outside.safetensors", "absolute path"),
        ("sub\\..\\..\\x.safetensors", "absolute path or uses"),
    ],
)
def test_invalid_escaping_path(tmp_path, file, expected):
    model = registry_model(tmp_path / "m")
    card_path = tmp_path / "m" / "model.yaml"
    data = yaml.safe_load(card_path.read_text())
    data["weights"]["file"] = file
    card_path.write_text(yaml.safe_dump(data))
    with pytest.raises(IntegrityError, match="weights.file") as info:
        load_model_folder(tmp_path / "m")
    assert expected in str(info.value)
    assert model.folder.exists()


def test_invalid_symlink_out_of_folder(tmp_path):
    registry_model(tmp_path / "m")
    outside = tmp_path / "outside.safetensors"
    os.replace(tmp_path / "m" / "model.safetensors", outside)
    os.symlink(outside, tmp_path / "m" / "model.safetensors")
    with pytest.raises(IntegrityError, match="outside the model folder"):
        load_model_folder(tmp_path / "m")
    # a card that is itself a symlink to a file elsewhere is refused too
    registry_model(tmp_path / "n")
    os.replace(tmp_path / "n" / "model.yaml", tmp_path / "card.yaml")
    os.symlink(tmp_path / "card.yaml", tmp_path / "n" / "model.yaml")
    with pytest.raises(IntegrityError, match="outside the model folder"):
        load_model_folder(tmp_path / "n")
    # the registry reports both as problems and lists neither
    scan = Registry([tmp_path]).scan()
    assert scan.models == []
    assert sorted(p.name for p, _ in scan.problems) == ["m", "n"]


class _Evil:
    """Unpickling this would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_invalid_malicious_pickle_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "evil"
    folder.mkdir()
    state = dict(tiny_network().state_dict())
    state["payload"] = _Evil(marker)
    torch.save(state, folder / "model.pt")
    assert not marker.exists()
    card = tiny_card(weights={"file": "model.pt", "sha256": sha256_file(folder / "model.pt")})
    (folder / "model.yaml").write_text(yaml.safe_dump(card))
    model = load_model_folder(folder)
    model.verify()  # the hash is right: the content is what is refused
    with pytest.raises(FileFormatError, match="refused: the file holds Python objects other than tensors"):
        model.load_network()
    assert not marker.exists()


def test_invalid_weights_do_not_fit_network(tmp_path):
    card = tiny_card(architecture={"name": "monai.UNet", "params": {"channels": [4, 16], "strides": [2],
                                                                     "num_res_units": 0}})
    model = save_model_folder(tmp_path / "m", card=card, state_dict=tiny_network().state_dict())
    with pytest.raises(InvalidInputError, match="do not fit architecture 'monai.UNet'"):
        model.load_network()
    with pytest.raises(InvalidInputError, match="dropout_rate=1.5"):
        model.load_network(dropout_rate=1.5)


def test_invalid_save_model_folder_arguments(tmp_path):
    with pytest.raises(InvalidInputError, match=r"state_dict\['w'\] is a list"):
        save_model_folder(tmp_path / "a", card=tiny_card(), state_dict={"w": [1, 2]})
    with pytest.raises(InvalidInputError, match="non-empty mapping"):
        save_model_folder(tmp_path / "a", card=tiny_card(), state_dict={})
    registry_model(tmp_path / "b")
    with pytest.raises(InvalidInputError, match="overwrite=True"):
        registry_model(tmp_path / "b", seed=1)
    replaced = save_model_folder(tmp_path / "b", card=tiny_card(), state_dict=tiny_network(1).state_dict(),
                                 overwrite=True)
    assert replaced.load_state_dict()["model.0.conv.weight"].equal(tiny_network(1).state_dict()["model.0.conv.weight"])
    with pytest.raises(IntegrityError, match="contains '..'"):
        save_model_folder(tmp_path / "c", card=tiny_card(), state_dict=tiny_network().state_dict(),
                          extra_files={"../x.txt": b"x"})
    assert not (tmp_path / "c").exists() and not (tmp_path / "x.txt").exists()
    with pytest.raises(InvalidInputError, match="clash with the card"):
        save_model_folder(tmp_path / "d", card=tiny_card(), state_dict=tiny_network().state_dict(),
                          extra_files={"model.yaml": b"name: other"})


def test_extra_files_are_verified(tmp_path):
    model = save_model_folder(tmp_path / "m", card=tiny_card(), state_dict=tiny_network().state_dict(),
                              extra_files={"docs/README.md": b"# tiny\n"})
    assert [f.file for f in model.card.files] == ["docs/README.md"]
    assert model.card.files[0].sha256 == hashlib.sha256(b"# tiny\n").hexdigest()
    model.verify()
    (tmp_path / "m" / "docs" / "README.md").write_bytes(b"# changed\n")
    with pytest.raises(IntegrityError, match="README.md: sha256 mismatch"):
        model.verify()
    with pytest.raises(IntegrityError, match="README.md: sha256 mismatch"):
        model.load_network()


# ------------------------------------------------------------------------------------ registry
def test_search_order_and_shadowing(env_dirs, tmp_path):
    user, env = env_dirs
    registry_model(env / "tiny", seed=1)
    registry_model(user / "tiny-user-copy", name="tiny", seed=2)
    registry_model(user / "other", name="other")
    (user / "broken").mkdir()
    (user / "broken" / "model.yaml").write_text("name: broken\n")
    registry = Registry()
    assert [s for _, s in registry.search_path][:2] == [ModelSource.ENV, ModelSource.USER]
    assert all(s is ModelSource.SHIPPED for _, s in registry.search_path[2:])
    scan = registry.scan()
    ours = {m.name: m for m in scan.models if m.source is not ModelSource.SHIPPED}
    assert sorted(ours) == ["other", "tiny"]
    assert ours["tiny"].source is ModelSource.ENV and ours["tiny"].folder == (env / "tiny").resolve()
    assert [(h.folder.name, w.folder.name) for h, w in scan.shadowed] == [("tiny-user-copy", "tiny")]
    assert [(p.name, "task: Field required" in why) for p, why in scan.problems] == [("broken", True)]
    assert registry.get("tiny").source is ModelSource.ENV
    assert registry.get("other").source is ModelSource.USER
    with pytest.raises(InvalidInputError, match="a folder of that name could not be used:.*Field required"):
        registry.get("broken")


def test_explicit_paths_first_wins(tmp_path):
    registry_model(tmp_path / "a" / "x", name="m", seed=1)
    registry_model(tmp_path / "b" / "y", name="m", seed=2)
    registry = Registry([tmp_path / "b", tmp_path / "a"], user_dir=tmp_path / "u")
    assert registry.get("m").folder == (tmp_path / "b" / "y").resolve()
    assert registry.get("m").source is ModelSource.PATH
    # a search folder that is itself a model folder
    assert Registry([tmp_path / "a" / "x"]).names() == ["m"]


def test_invalid_unknown_name_lists_close_matches(tmp_path):
    registry_model(tmp_path / "r" / "liver-ct", name="liver-ct")
    registry_model(tmp_path / "r" / "brain-mr", name="brain-mr")
    registry = Registry([tmp_path / "r"])
    with pytest.raises(InvalidInputError, match=r"no model named 'livr-ct' .*did you mean 'liver-ct'\?"):
        registry.get("livr-ct")
    with pytest.raises(InvalidInputError, match="available: brain-mr, liver-ct"):
        registry.get("zzz")
    with pytest.raises(InvalidInputError, match="did you mean 'brain-mr'"):
        load_model("brain-mri", registry=registry)
    with pytest.raises(InvalidInputError, match="search folder does not exist|no model"):
        Registry([tmp_path / "missing"]).get("x")
    assert Registry([tmp_path / "missing"]).scan().problems == [(tmp_path / "missing", "search folder does not exist")]


def test_load_model_by_name_or_folder(tmp_path, monkeypatch):
    registry_model(tmp_path / "r" / "tiny")
    registry = Registry([tmp_path / "r"])
    assert load_model("tiny", registry=registry).source is ModelSource.PATH
    assert load_model(tmp_path / "r" / "tiny").folder == (tmp_path / "r" / "tiny").resolve()
    assert load_model(str(tmp_path / "r" / "tiny")).name == "tiny"
    monkeypatch.chdir(tmp_path / "r")
    assert load_model("tiny", registry=Registry([tmp_path / "empty"])).name == "tiny"  # a folder in the cwd


def test_add_copies_verified_files_atomically(env_dirs, tmp_path):
    user, _ = env_dirs
    source = registry_model(tmp_path / "src" / "whatever", name="liver")
    (tmp_path / "src" / "whatever" / "stray.bin").write_bytes(b"not named by the card")
    registry = Registry()
    added = registry.add(tmp_path / "src" / "whatever")
    assert added.folder == (user / "liver").resolve() and added.source is ModelSource.USER
    assert sorted(p.name for p in added.folder.iterdir()) == ["model.safetensors", "model.yaml"]
    assert added.card == source.card
    assert registry.verify("liver") == {"liver": source.sha256}
    with pytest.raises(InvalidInputError, match="already exists"):
        registry.add(tmp_path / "src" / "whatever")
    other = registry_model(tmp_path / "src2", name="liver", seed=9)
    assert registry.add(tmp_path / "src2", force=True).sha256 == other.sha256
    assert [p.name for p in user.iterdir()] == ["liver"]  # no temporary folders left


def test_invalid_add_tampered_folder_leaves_nothing(env_dirs, tmp_path):
    user, _ = env_dirs
    model = registry_model(tmp_path / "src", name="liver")
    model.weights_path().write_bytes(model.weights_path().read_bytes()[:-4])
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        Registry().add(tmp_path / "src")
    assert not user.exists() or list(user.iterdir()) == []


def test_remove_only_from_user_folder(env_dirs, tmp_path):
    user, env = env_dirs
    registry_model(env / "shared", name="shared")
    registry = Registry()
    registry.add(registry_model(tmp_path / "src", name="mine").folder)
    assert registry.remove("mine") == (user / "mine").resolve()
    assert not (user / "mine").exists() and list(user.iterdir()) == []
    with pytest.raises(InvalidInputError, match="only models in the user folder can be removed"):
        registry.remove("shared")
    with pytest.raises(InvalidInputError, match="did you mean 'shared'"):
        registry.remove("sharde")
    assert (env / "shared" / "model.yaml").exists()


def test_shipped_models_folder_of_the_checkout():
    import napari_medseg

    checkout = Path(napari_medseg.__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "models").is_dir():
        assert shipped_models_dirs()[0] == checkout / "models"


# ------------------------------------------------------------------------------------ MONAI bundles
def test_import_monai_bundle(tmp_path):
    bundle, net = write_bundle(tmp_path / "spleen_ct_segmentation", checkpoint=True)
    model = import_monai_bundle(bundle, tmp_path / "out")
    card = model.card
    assert card.name == "spleen_ct_segmentation" and card.version == "0.2.0"
    assert card.task == "Decathlon spleen segmentation" and card.license == "Apache-2.0"
    assert card.authors == ["MONAI team"] and card.references == ["Kerfoot et al. 2019"]
    assert card.architecture.name == "monai.UNet" and card.architecture.params == NET_PARAMS
    assert card.spatial_dims == 3 and [(c.name, c.modality) for c in card.channels] == [("image", "CT")]
    assert {v: s.name for v, s in card.labels.items()} == {0: "background", 1: "spleen"}
    assert card.spacing == (1.5, 1.5, 2.0) and card.orientation == "RAS"
    assert card.normalization.kind == "ct_window"
    assert (card.normalization.window_center, card.normalization.window_width) == (53.5, 221.0)
    assert card.normalization.clip is True
    assert card.patch_size == (16, 24, 32) and card.overlap == 0.5
    assert card.metrics == {"mean_dice": 0.96}
    assert card.monai_bundle["copyright"] == "Copyright (c) MONAI Consortium"
    assert [f.file for f in card.files] == ["bundle/metadata.json", "bundle/inference.json"]
    assert model.weights_path().name == "model.safetensors"
    assert model.sha256 == sha256_file(model.weights_path())
    model.verify()
    loaded = model.load_network()
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        assert torch.equal(loaded(x), net(x))


def test_import_bundle_other_transforms_and_safetensors(tmp_path):
    from safetensors.torch import save_file

    transforms = [{"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True},
                  {"_target_": "monai.transforms.NormalizeIntensityd", "keys": "image", "nonzero": True}]
    network_def = {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                   "dropout": 0.2, **NET_PARAMS}
    bundle, net = write_bundle(tmp_path / "b", network_def=network_def, transforms=transforms,
                               metadata={"name": "My Bundle v2"})
    (bundle / "models" / "model.pt").unlink()
    save_file(net.state_dict(), bundle / "models" / "model.safetensors")
    model = import_monai_bundle(bundle, tmp_path / "out")
    assert model.name == "b"  # the bundle's folder name; the display name is kept in monai_bundle
    assert model.card.monai_bundle["name"] == "My Bundle v2" and model.card.axis_order == "xyz"
    assert model.card.normalization.kind == "zscore" and model.card.normalization.nonzero_only
    assert model.card.dropout.rate == 0.2 and "dropout" not in model.card.architecture.params
    assert model.card.spacing is None and model.card.orientation is None


@pytest.mark.parametrize(
    "kwargs, error, expected",
    [
        ({"network_def": {"_target_": "os.system", "command": "echo hi"}}, InvalidInputError,
         "is not a monai.networks.nets class"),
        ({"network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                          "out_channels": "$@num_classes.bit_length()", **NET_PARAMS}}, InvalidInputError,
         "the call @num_classes.bit_length(...) is outside the expression subset"),
        ({"network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 1, **NET_PARAMS}},
         InvalidInputError, "outputs num_channels=2 but network_def says 1"),
        ({"transforms": [{"_target_": "ScaleIntensityRanged", "a_min": 0, "a_max": 100, "b_min": 0, "b_max": 255}]},
         InvalidInputError, "preprocessing must start with LoadImaged"),
        ({"metadata": {"network_data_format": {"inputs": {"image": {"num_channels": 3}}, "outputs": {}}}},
         InvalidInputError, "num_channels=3 but network_def says 1"),
    ],
    ids=["not monai", "expression", "one output channel", "no loader", "channel count"],
)
def test_invalid_bundle(tmp_path, kwargs, error, expected):
    bundle, _ = write_bundle(tmp_path / "b", **kwargs)
    with pytest.raises(error) as info:
        import_monai_bundle(bundle, tmp_path / "out")
    assert expected in str(info.value)
    assert not (tmp_path / "out").exists()


def test_invalid_bundle_files(tmp_path):
    with pytest.raises(FileFormatError, match="no configs/ folder"):
        import_monai_bundle(tmp_path, tmp_path / "out")
    bundle, _ = write_bundle(tmp_path / "b")
    (bundle / "models" / "model.pt").unlink()
    with pytest.raises(FileFormatError, match="no weights: the config's CheckpointLoader load_path and models/model.safetensors"):
        import_monai_bundle(bundle, tmp_path / "out")
    (bundle / "configs" / "metadata.json").unlink()
    with pytest.raises(FileFormatError, match="metadata.json is missing"):
        import_monai_bundle(bundle, tmp_path / "out")


def test_invalid_bundle_weights_do_not_fit(tmp_path):
    bundle, _ = write_bundle(tmp_path / "b")
    torch.save(tiny_network(out_channels=3).state_dict(), bundle / "models" / "model.pt")
    with pytest.raises(InvalidInputError, match="do not fit architecture 'monai.UNet'"):
        import_monai_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_card_is_not_modified_by_save(tmp_path):
    card = tiny_card()
    before = copy.deepcopy(card)
    registry_model(tmp_path / "m")
    save_model_folder(tmp_path / "n", card=card, state_dict=tiny_network().state_dict())
    assert card == before
    model_card = ModelCard.model_validate({**card, "weights": {"file": "w.pt", "sha256": "0" * 64}})
    saved = save_model_folder(tmp_path / "o", card=model_card, state_dict=tiny_network().state_dict())
    assert model_card.weights.file == "w.pt" and saved.card.weights.file == "model.safetensors"
