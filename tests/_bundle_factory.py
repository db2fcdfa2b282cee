"""Real MONAI bundle folders for the tests, modelled on Model Zoo configs (structure only)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"}


def inference_config(network_def, preprocessing, postprocessing, inferer, *, extra=None):
    config = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
        "inferer": inferer,
        "postprocessing": {"_target_": "Compose", "transforms": postprocessing + [
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False, "squeeze_end_dims": True}]},
        "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": False},
        "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                             "load_dict": {"model": "@network"}, "map_location": "cpu"},
        "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
        "run": ["$@evaluator.run()"],
    }
    config.update(extra or {})
    return config


def spleen_like():
    """spleen_ct_segmentation: UNet, Orientationd/Spacingd/ScaleIntensityRanged, sliding window, softmax + Invertd."""
    pre = [
        {"_target_": "LoadImaged", "keys": "@image_key"},
        {"_target_": "EnsureChannelFirstd", "keys": "@image_key"},
        {"_target_": "Orientationd", "keys": "@image_key", "axcodes": "RAS"},
        {"_target_": "Spacingd", "keys": "@image_key", "pixdim": [1.5, 1.5, 2.0], "mode": "bilinear"},
        {"_target_": "ScaleIntensityRanged", "keys": "@image_key", "a_min": -57, "a_max": 164, "b_min": 0, "b_max": 1,
         "clip": True},
        {"_target_": "EnsureTyped", "keys": "@image_key", "device": "@device"},
    ]
    post = [
        {"_target_": "Activationsd", "keys": "pred", "softmax": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "@image_key",
         "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
    ]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 16], "sw_batch_size": 4, "overlap": 0.5,
               "sw_device": "@device"}
    return inference_config(copy.deepcopy(UNET), pre, post, inferer, extra={"image_key": "image"})


def metadata(name, *, in_channels=1, out_names=("background", "spleen"), task="Decathlon spleen segmentation",
             out_type="image", modality="CT"):
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0", "name": name, "task": task, "description": "test bundle", "authors": "MONAI team",
        "copyright": "Copyright (c) MONAI Consortium", "license": "Apache-2.0",
        "eval_metrics": {"mean_dice": 0.9},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": modality, "num_channels": in_channels,
                                 "spatial_shape": [32, 32, 16], "channel_def": {str(i): f"ch{i}" if in_channels > 1 else "image" for i in range(in_channels)}}},
            "outputs": {"pred": {"type": out_type, "format": "segmentation", "num_channels": len(out_names),
                                 "spatial_shape": [32, 32, 16], "channel_def": {str(i): n for i, n in enumerate(out_names)}}},
        },
    }


def write_bundle(root: Path, config: dict, meta: dict, *, seed: int = 0, weights: str = "models/model.pt",
                 checkpoint_key: str | None = "model", calibrate_on: torch.Tensor | None = None) -> tuple[Path, torch.nn.Module]:
    """A bundle folder whose weights come from MONAI's own network definition, seeded."""
    from monai.bundle import ConfigParser

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=1))
    torch.manual_seed(seed)
    parser = ConfigParser(config)  # MONAI's own parser builds the network, as its workflow will
    net = parser.get_parsed_content("network_def")
    with torch.no_grad():  # trained nets have non-trivial batch-norm statistics; make them so
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    net.eval()
    if calibrate_on is not None:
        calibrate(net, calibrate_on)
    path = root / weights
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({checkpoint_key: net.state_dict()} if checkpoint_key else net.state_dict(), path)
    return root, net


def run_monai(bundle: Path, images: list[Path] | Path, out_dir: Path, *, weights: str = "models/model.pt",
              key: str | None = "model") -> Path:
    """MONAI's own bundle workflow on one input (a file, or a list of files for channels)."""
    from monai.bundle import ConfigWorkflow

    # pytorch-ignite (which MONAI's SupervisedEvaluator and CheckpointLoader need) is not a
    # dependency, so the evaluator's loop - eval mode, no grad, collate, inferer, decollate,
    # postprocessing - and the checkpoint loading are written as config expressions; everything
    # else (parsing, transforms, inferer, Invertd, SaveImaged) is MONAI's own bundle machinery.
    load = f"torch.load(@bundle_root + '/{weights}', weights_only=True)" + (f"['{key}']" if key else "")
    workflow = ConfigWorkflow(
        config_file=str(bundle / "configs" / "inference.json"), meta_file=str(bundle / "configs" / "metadata.json"),
        workflow_type="infer", bundle_root=str(bundle), output_dir=str(out_dir),
        datalist=[str(images)] if isinstance(images, Path) else [[str(p) for p in images]],
        initialize=[
            "$torch.set_grad_enabled(False)",
            f"$@network.load_state_dict({load})",
            "$@network.eval()",
        ],
        run=["$[@postprocessing(monai.data.decollate_batch({**b, 'pred': @inferer(b['image'], @network)})[0]) "
             "for b in @dataloader]"],
    )
    # the workflow switches gradients off for the whole thread, as MONAI's evaluator does for its
    # run; restore the mode so the tests that run after this one can train
    import torch

    grad_enabled = torch.is_grad_enabled()
    try:
        workflow.initialize()
        workflow.run()
        workflow.finalize()
    finally:
        torch.set_grad_enabled(grad_enabled)
    found = sorted(out_dir.rglob("*.nii.gz"))
    assert len(found) == 1, found
    return found[0]


def write_nifti(path: Path, array_xyz: np.ndarray, affine: np.ndarray) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(array_xyz.astype(np.float32), affine), str(path))
    return path


SOFTMAX_POST = [
    {"_target_": "Activationsd", "keys": "pred", "softmax": True},
    {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
     "nearest_interp": False, "to_tensor": True},
    {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
]


def brats_like():
    """brats_mri_segmentation: SegResNet, 4 channels, sigmoid TC/WT/ET, labels {1, 2, 4} by a rule."""
    net = {"_target_": "SegResNet", "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "init_filters": 8,
           "in_channels": 4, "out_channels": 3, "dropout_prob": 0.2}
    pre = [{"_target_": "LoadImaged", "keys": "image", "image_only": False},
           {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}]
    post = [
        {"_target_": "Activationsd", "keys": "pred", "sigmoid": True},
        {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
         "meta_keys": "pred_meta_dict", "nearest_interp": False, "to_tensor": True},
        {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5},
        {"_target_": "Lambdad", "keys": "pred",
         "func": "$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))"},
    ]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [16, 16, 8], "sw_batch_size": 1, "overlap": 0.5}
    return inference_config(net, pre, post, inferer)


def dynunet_like():
    """A DynUNet with res_block=True; CropForegroundd, Spacingd, NormalizeIntensityd, KeepLargestConnectedComponentd."""
    net = {"_target_": "DynUNet", "spatial_dims": 3, "in_channels": 1, "out_channels": "@num_classes",
           "kernel_size": [[3, 3, 3], [3, 3, 3], [3, 3, 3]], "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 1]],
           "upsample_kernel_size": [[2, 2, 2], [2, 2, 1]], "filters": [4, 8, 16], "norm_name": "instance",
           "deep_supervision": False, "res_block": True}
    pre = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "CropForegroundd", "keys": "image", "source_key": "image", "margin": 2, "allow_smaller": True},
        {"_target_": "Spacingd", "keys": "image", "pixdim": "@pixdim", "mode": "bilinear"},
        {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False},
    ]
    post = SOFTMAX_POST + [{"_target_": "KeepLargestConnectedComponentd", "keys": "pred", "applied_labels": [1, 2]}]
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": "@roi", "sw_batch_size": 2, "overlap": 0.25,
               "mode": "gaussian", "sigma_scale": 0.2, "padding_mode": "replicate"}
    return inference_config(net, pre, post, inferer, extra={
        "num_classes": 3, "pixdim": [1.5, 1.5, 2.5], "roi": "$[16, 16, 4 * len(@pixdim) // 2 + 2]"})


def swin_like():
    """A small SwinUNETR; Orientationd, ScaleIntensityd (channel_wise False), Resized, Gaussian blending."""
    net = {"_target_": "SwinUNETR", "spatial_dims": 3, "in_channels": 1, "out_channels": 2, "feature_size": 12,
           "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2]}
    pre = [
        {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "LPS"},
        {"_target_": "ScaleIntensityd", "keys": "image", "minv": 0.0, "maxv": 1.0, "channel_wise": False},
        {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64, 32], "mode": "trilinear"},
    ]
    # SwinUNETR's bottleneck (1/32) needs more than one voxel for its instance norm
    inferer = {"_target_": "SlidingWindowInferer", "roi_size": [64, 64, 32], "sw_batch_size": 1, "overlap": 0.25,
               "mode": "gaussian"}
    return inference_config(net, pre, SOFTMAX_POST, inferer)


def classification_like():
    net = {"_target_": "DenseNet121", "spatial_dims": 3, "in_channels": 1, "out_channels": 2}
    pre = [{"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True},
           {"_target_": "ScaleIntensityd", "keys": "image"}]
    post = [{"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    return inference_config(net, pre, post, {"_target_": "SimpleInferer"})


def calibrate(net: torch.nn.Module, x: torch.Tensor) -> None:
    """Shift an output convolution's bias so every output channel wins on part of ``x``.

    Model Zoo weights are trained; seeded random weights often predict one class everywhere, which
    would make an agreement test blind. Only a bias moves: the network stays MONAI's.
    """
    with torch.no_grad():
        y = net(x)
        n = y.shape[1]
        centre = y.movedim(1, -1).reshape(-1, n).median(dim=0).values
        convs = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)) and m.bias is not None and m.out_channels == n]
        for conv in reversed(convs):  # the one that feeds the output linearly
            conv.bias -= centre
            moved = net(x).movedim(1, -1).reshape(-1, n).median(dim=0).values
            if torch.allclose(moved, torch.zeros_like(moved), atol=1e-3 * float(centre.abs().max() + 1)):
                return
            conv.bias += centre
    raise AssertionError("no output convolution to calibrate")


def ventricular_like():
    """ventricular_short_axis_3label: a 2D UNet run slice by slice over a volume (SliceInferer);
    the preprocessing is given as "$@load + @intensity", as segmentation_template writes it."""
    net = {"_target_": "UNet", "spatial_dims": 2, "in_channels": 1, "out_channels": 4, "channels": [4, 8, 16],
           "strides": [2, 2], "num_res_units": 1}
    post = copy.deepcopy(SOFTMAX_POST)
    post[1]["meta_key_postfix"] = "meta_dict"
    inferer = {"_target_": "SliceInferer", "roi_size": [16, 16], "spatial_dim": 2, "sw_batch_size": 4}
    config = inference_config(net, [], post, inferer, extra={
        "load": [{"_target_": "LoadImaged", "keys": "image", "image_only": False},
                 {"_target_": "EnsureChannelFirstd", "keys": "image"}],
        "intensity": [{"_target_": "ScaleIntensityd", "keys": "image"},
                      {"_target_": "EnsureTyped", "keys": "image", "device": "@device"}],
    })
    config["preprocessing"]["transforms"] = "$@load + @intensity"
    return config
