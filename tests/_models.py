"""The tests' one tiny-model factory, :func:`make_model`, with the cards the tests use.

Every model is a tiny network with seeded random weights, built from its card and written by the
registry's ``save_model_folder`` (nothing downloads). Cards:

- :func:`unet_card` (default): our ``unet`` with dropout, z-score normalisation, labels
  ``label1``... (inference, predict, batch, DICOM SEG tests);
- :func:`tissue_card`: the faces' model ``tiny-seg`` (MR "T1", labels ``tissue1``, ``tissue2``,
  spacing 1 x 1 x 2 mm, dropout in the decoder and before the head) for napari and Slicer;
- :func:`tiny_card`: the registry tests' ``monai.UNet`` card (CT window, label ``liver``), whose
  network is :func:`tiny_network`.
"""

from __future__ import annotations

import json
from pathlib import Path

NET_PARAMS = {"channels": [4, 8], "strides": [2], "num_res_units": 0}
_TISSUE_COLORS = {0: (0.0, 0.0, 0.0), 1: (1.0, 0.0, 0.0), 2: (0.0, 0.8, 0.2), 3: (0.1, 0.2, 0.9)}


def unet_card(name: str = "tiny", *, spatial_dims: int = 3, channels=(4, 8), in_channels: int = 1, labels=(0, 1),
              patch_size=None, placement=("head",), rate: float = 0.2, **card_fields) -> dict:
    """A card for our ``unet`` with dropout (``placement``, ``rate``) and z-score normalisation."""
    params = {"channels": list(channels)}
    card = {
        "name": name, "version": "1.0", "description": "test model", "task": "segmentation", "license": "Apache-2.0",
        "architecture": {"name": "unet", "params": params}, "spatial_dims": spatial_dims,
        "channels": [{"name": f"c{i}", "modality": "CT"} for i in range(in_channels)],
        "labels": {v: {"name": "background" if v == 0 else f"label{v}", "color": (0.0, 0.0, float(v > 0))} for v in labels},
        "normalization": {"kind": "zscore"},
        "patch_size": patch_size or ((8, 16, 16) if spatial_dims == 3 else (16, 16)),
        "dropout": {"placement": list(placement), "rate": rate},
    }
    card.update(card_fields)
    return card


def tissue_card(name: str = "tiny-seg", *, labels=(0, 1, 2), channels=(4, 8), spacing=(1.0, 1.0, 2.0),
                **card_fields) -> dict:
    """The faces' 3D U-Net card: labels ``tissue1``... (up to 3), MR "T1", no orientation."""
    card = unet_card(name, channels=channels, labels=labels, placement=("decoder", "head"), rate=0.2)
    card.update({
        "description": "tiny test model",
        "channels": [{"name": "T1", "modality": "MR"}],
        "labels": {v: {"name": "background" if v == 0 else f"tissue{v}", "color": _TISSUE_COLORS[v]} for v in labels},
        "spacing": spacing, "orientation": None, "patch_size": (8, 16, 16), "metrics": {"dice_tissue1": 0.5},
    })
    card.update(card_fields)
    return card


def tiny_card(name: str = "tiny", **overrides) -> dict:
    """The registry tests' card: ``monai.UNet`` (:data:`NET_PARAMS`), CT window, label ``liver``."""
    card = {
        "name": name,
        "version": "1.0.0",
        "description": "tiny test model",
        "task": "segmentation",
        "license": "Apache-2.0",
        "authors": "Test Author",
        "architecture": {"name": "monai.UNet", "params": dict(NET_PARAMS)},
        "spatial_dims": 3,
        "channels": [{"name": "image", "modality": "CT"}],
        "labels": {0: {"name": "background", "color": [0, 0, 0]}, 1: {"name": "liver", "color": [1, 0, 0]}},
        "spacing": [0.8, 0.8, 2.5],
        "orientation": "ras",
        "normalization": {"kind": "ct_window", "window_center": 40, "window_width": 400},
        "patch_size": [8, 16, 16],
        "overlap": 0.5,
        "metrics": {"dice": 0.5},
    }
    card.update(overrides)
    return card


def network_for(card: dict, seed: int = 0):
    """The card's network with ``torch.manual_seed(seed)`` random weights, in eval mode."""
    import torch

    from napari_medseg.networks import build_network

    dropout = card.get("dropout")
    extra = {"dropout_rate": dropout["rate"], "dropout_placement": list(dropout["placement"])} if dropout else {}
    torch.manual_seed(seed)
    return build_network(
        card["architecture"]["name"], spatial_dims=card["spatial_dims"], in_channels=len(card["channels"]),
        out_channels=len(card["labels"]), **card["architecture"]["params"], **extra,
    ).eval()


def tiny_network(seed: int = 0, out_channels: int = 2):
    """The network of :func:`tiny_card` (``out_channels`` labels)."""
    return network_for({**tiny_card(), "labels": dict.fromkeys(range(out_channels))}, seed)


def make_model(folder: Path, *, name: str = "tiny", seed: int = 0, card: dict | None = None, subfolder: bool = True,
               **card_fields):
    """Write a tiny registry model folder and return its ``RegistryModel``.

    Parameters
    ----------
    folder : Path
        Where: the model folder is ``folder / card["name"]`` (``subfolder=True``) or ``folder``.
    name, card_fields
        For the default card, :func:`unet_card` ``(name, **card_fields)``.
    card : dict, optional
        Any other card (:func:`tissue_card`, :func:`tiny_card`); then ``name``/``card_fields`` are unused.
    seed : int
        ``torch.manual_seed`` of the random weights.
    """
    from napari_medseg.registry import save_model_folder

    if card is None:
        card = unet_card(name, **card_fields)
    elif card_fields:
        raise TypeError(f"make_model: give the card's fields to its card function, not {sorted(card_fields)}")
    target = Path(folder) / card["name"] if subfolder else Path(folder)
    return save_model_folder(target, card=card, state_dict=network_for(card, seed).state_dict())


def registry_model(folder: Path, name: str = "tiny", seed: int = 0, **overrides):
    """:func:`make_model` with :func:`tiny_card` written into ``folder`` itself (the registry tests)."""
    return make_model(folder, seed=seed, card=tiny_card(name, **overrides), subfolder=False)


def write_bundle(root: Path, *, seed: int = 0, network_def: dict | None = None, metadata: dict | None = None,
                 checkpoint: bool = False, transforms: list | None = None):
    """A MONAI bundle folder as the model zoo lays it out, with a tiny UNet; returns ``(root, network)``."""
    import torch

    net = tiny_network(seed)
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "version": "0.2.0",
        "monai_version": "1.3.0",
        "task": "Decathlon spleen segmentation",
        "description": "A tiny spleen model",
        "authors": "MONAI team",
        "copyright": "Copyright (c) MONAI Consortium",
        "eval_metrics": {"mean_dice": 0.96, "note": "text is dropped"},
        "intended_use": "tests only",
        "references": ["Kerfoot et al. 2019"],
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [96, 96, 96], "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": [96, 96, 96], "channel_def": {"0": "background", "1": "spleen"}}},
        },
    }
    meta.update(metadata or {})
    inference = {
        "bundle_root": ".",
        "num_classes": 2,
        "device": "$torch.device('cpu')",
        "network_def": network_def or {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1,
                                       "out_channels": "@num_classes", **NET_PARAMS},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": transforms if transforms is not None else [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57, "a_max": 164, "b_min": 0.0,
             "b_max": 1.0, "clip": True},
        ]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 24, 16], "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image"},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]},
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    (root / "LICENSE").write_text("                                 Apache License\n  Version 2.0, January 2004\n")
    state = {"model": net.state_dict(), "epoch": 3} if checkpoint else net.state_dict()
    torch.save(state, root / "models" / "model.pt")
    return root, net
