"""MONAI bundles: imported and run by napari-medseg, compared with MONAI's own bundle workflow.

Each test builds a real bundle folder (configs modelled on Model Zoo bundles, weights from MONAI's
own network definition with a fixed seed), runs MONAI's config workflow on a NIfTI input with a
SaveImaged to a temporary folder, and runs the same input through ``medseg``: at least 99.5 % of
the voxels must be identical, Dice >= 0.98 per label, and the geometry equal.
"""

from __future__ import annotations

import json
import os
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from _bundle_factory import (
    brats_like,
    classification_like,
    dynunet_like,
    metadata,
    run_monai,
    spleen_like,
    swin_like,
    ventricular_like,
    write_bundle,
    write_nifti,
)
from napari_medseg.bundles import evaluate_expression, import_monai_bundle, tensor_function
from napari_medseg.errors import FileFormatError, InvalidInputError
from napari_medseg.inference import predict
from napari_medseg.registry import Registry, load_model_folder
from napari_medseg.volume import read_volume

pytestmark = pytest.mark.filterwarnings("ignore")


def smooth_image(shape, *, seed, scale=400.0, offset=50.0):
    rng = np.random.default_rng(seed)
    img = gaussian_filter(rng.normal(0, 1, shape), 2.0)
    return img / img.std() * scale + offset


def agreement(ours_xyz, ref_xyz):
    """(fraction of identical voxels, {label: Dice}) over the labels either map holds."""
    assert ours_xyz.shape == ref_xyz.shape
    same = float((ours_xyz == ref_xyz).mean())
    dice = {}
    for v in sorted(set(np.unique(ref_xyz).tolist()) | set(np.unique(ours_xyz).tolist())):
        a, b = ours_xyz == v, ref_xyz == v
        dice[v] = 2 * float((a & b).sum()) / float(a.sum() + b.sum())
    return same, dice


def check_against_monai(ours_xyz, reference_file, *, labels):
    ref = nib.load(str(reference_file))
    ref_xyz = np.asarray(ref.dataobj).squeeze()
    same, dice = agreement(np.asarray(ours_xyz), ref_xyz)
    assert set(np.unique(ref_xyz).tolist()) == set(labels), np.unique(ref_xyz)  # every label occurs: not blind
    assert same >= 0.995, (same, dice)
    assert min(dice.values()) >= 0.98, dice
    return ref


# an anisotropic input in LPS-like axes (x flipped, y flipped): Orientationd and Spacingd both act
AFFINE = np.array([[-1.2, 0, 0, 10.0], [0, -1.0, 0, -20.0], [0, 0, 2.5, 5.0], [0, 0, 0, 1]])


def test_spleen_like_bundle_cli_matches_monai(tmp_path, run_cli):
    """UNet, Orientationd/Spacingd/ScaleIntensityRanged, sliding window, softmax + Invertd; via the CLI."""
    config = spleen_like()
    calib = torch.from_numpy(np.clip(smooth_image((16, 16, 16), seed=5, scale=0.4, offset=0.5), 0, 1)).float()[None, None]
    bundle, _ = write_bundle(tmp_path / "spleen_ct_segmentation", config, metadata("Spleen CT segmentation"),
                             calibrate_on=calib)
    image = write_nifti(tmp_path / "case.nii.gz", smooth_image((24, 26, 12), seed=0), AFFINE)
    reference = run_monai(bundle, image, tmp_path / "monai")

    user = tmp_path / "user"
    env = {**os.environ, "MEDSEG_USER_MODELS": str(user), "MEDSEG_MODELS": str(tmp_path / "none")}
    out = run_cli("models", "import-bundle", bundle, "--add", env=env).stdout
    assert "spleen_ct_segmentation" in out
    card = load_model_folder(user / "spleen_ct_segmentation").card
    assert card.axis_order == "xyz" and (card.outputs.activation, card.outputs.channels) == ("softmax", ["background", "spleen"])
    # the metadata's display name finds the model too (the folder name is the registry name)
    run_cli("predict", image, tmp_path / "ours.nii.gz", "--model", "Spleen CT segmentation", "--device", "cpu",
            "--no-progress", env=env)
    ours = nib.load(str(tmp_path / "ours.nii.gz"))
    ref = check_against_monai(np.asarray(ours.dataobj), reference, labels={0, 1})
    assert np.allclose(ours.affine, ref.affine, atol=1e-4) and ours.shape == ref.shape[:3]


def test_brats_like_sigmoid_bundle_matches_monai(tmp_path):
    """SegResNet, 4 channels, sigmoid TC/WT/ET overlapping, labels {1, 2, 4} by the bundle's rule."""
    calib = torch.from_numpy(np.stack([smooth_image((16, 16, 8), seed=s, scale=1.0, offset=0.0) for s in range(4)])).float()[None]
    bundle, _ = write_bundle(tmp_path / "brats_mri_segmentation", brats_like(),
                             metadata("BraTS MRI segmentation", in_channels=4, out_names=("TC", "WT", "ET"), modality="MRI"),
                             calibrate_on=calib)
    files = []
    for c in range(4):
        arr = smooth_image((20, 24, 12), seed=10 + c, scale=100, offset=300)
        arr[:3] = 0  # background outside the head: NormalizeIntensityd(nonzero) skips it
        files.append(write_nifti(tmp_path / f"case_{c}.nii.gz", arr, AFFINE))
    reference = run_monai(bundle, files, tmp_path / "monai")
    model = import_monai_bundle(bundle, tmp_path / "model")
    card = model.card
    assert card.outputs.activation == "sigmoid" and card.out_channels == 3
    assert {v: s.name for v, s in card.labels.items()} == {0: "background", 4: "ET", 1: "TC", 2: "WT"}
    volumes = [read_volume(f) for f in files]
    pred = predict(volumes, model, device="cpu")
    ref = check_against_monai(pred.labels.array.transpose(2, 1, 0), reference, labels={0, 1, 2, 4})
    assert pred.labels.geometry.isclose(volumes[0].geometry)
    assert "entropy" in pred.uncertainty and float(pred.uncertainty["entropy"].array.max()) > 0


def test_dynunet_res_block_bundle_matches_monai(tmp_path):
    """DynUNet res_block=True (crashed in the optimised copy), CropForegroundd, Gaussian mode, replicate padding,
    KeepLargestConnectedComponentd; roi from a '$' expression, weights where the CheckpointLoader points."""
    config = dynunet_like()
    config["checkpointloader"]["load_path"] = "$@bundle_root + '/models/dyn/best_' + str(@num_classes) + '.pt'"
    calib = torch.from_numpy(smooth_image((16, 16, 8), seed=7, scale=1.0, offset=0.0)).float()[None, None]
    bundle, _ = write_bundle(tmp_path / "dyn_res", config, metadata("dyn", out_names=("background", "a", "b")),
                             weights="models/dyn/best_3.pt", checkpoint_key=None, calibrate_on=calib)
    arr = smooth_image((28, 24, 12), seed=3)
    arr[:4] = 0
    arr[:, -3:] = 0  # a margin CropForegroundd removes (and Invertd pads back)
    image = write_nifti(tmp_path / "case.nii.gz", arr, AFFINE)
    reference = run_monai(bundle, image, tmp_path / "monai", weights="models/dyn/best_3.pt", key=None)
    model = import_monai_bundle(bundle, tmp_path / "model")
    assert model.card.patch_size == (8, 16, 16)  # roi [16, 16, 4 * 3 // 2 + 2], reversed to (z, y, x)
    volume = read_volume(image)
    pred = predict(volume, model, device="cpu")
    check_against_monai(pred.labels.array.transpose(2, 1, 0), reference, labels={0, 1, 2})
    assert pred.labels.geometry.isclose(volume.geometry)


@pytest.mark.slow
def test_swin_unetr_bundle_matches_monai(tmp_path):
    """SwinUNETR (needs einops), Orientationd to LPS, ScaleIntensityd over all channels, Resized, Gaussian blending."""
    calib = torch.from_numpy(np.clip(smooth_image((64, 64, 32), seed=9, scale=0.3, offset=0.5), 0, 1)).float()[None, None]
    bundle, _ = write_bundle(tmp_path / "swin_small", swin_like(), metadata("swin"), calibrate_on=calib)
    image = write_nifti(tmp_path / "case.nii.gz", smooth_image((30, 28, 14), seed=4), AFFINE)
    reference = run_monai(bundle, image, tmp_path / "monai")
    model = import_monai_bundle(bundle, tmp_path / "model")
    pred = predict(read_volume(image), model, device="cpu")
    check_against_monai(pred.labels.array.transpose(2, 1, 0), reference, labels={0, 1})


def test_slice_inferer_2d_bundle_matches_monai(tmp_path):
    """A 2D network over a volume with SliceInferer; transforms given as '$@load + @intensity'."""
    calib = torch.from_numpy(np.clip(smooth_image((16, 16), seed=2, scale=0.3, offset=0.5), 0, 1)).float()[None, None]
    bundle, _ = write_bundle(tmp_path / "ventricular_short_axis_3label", ventricular_like(),
                             metadata("ventricles", out_names=("background", "lv", "myo", "rv"), modality="MR"),
                             calibrate_on=calib)
    image = write_nifti(tmp_path / "case.nii.gz", smooth_image((22, 20, 5), seed=6), AFFINE)
    reference = run_monai(bundle, image, tmp_path / "monai")
    model = import_monai_bundle(bundle, tmp_path / "model")
    assert model.card.spatial_dims == 2 and model.card.patch_size == (16, 16)
    pred = predict(read_volume(image), model, device="cpu")
    check_against_monai(pred.labels.array.transpose(2, 1, 0), reference, labels={0, 1, 2, 3})


def test_invalid_classification_bundle(tmp_path):
    bundle, _ = write_bundle(tmp_path / "cls", classification_like(),
                             metadata("cls", task="Lung nodule classification", out_type="probabilities"))
    with pytest.raises(InvalidInputError, match="task is 'Lung nodule classification'.*only segmentation"):
        import_monai_bundle(bundle, tmp_path / "out")
    # a classifier whose metadata claims segmentation is caught by the forward pass at import
    meta = metadata("cls", task="segmentation")
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    config = classification_like()
    config["postprocessing"]["transforms"].insert(1, {"_target_": "Identityd", "keys": "pred"})
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match="not a segmentation map"):
        import_monai_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["preprocessing"]["transforms"].insert(2, {"_target_": "RandFlipd", "keys": "image", "prob": 0.5}),
         r"transforms\[2\]: RandFlipd is not reproduced"),
        (lambda c: c["postprocessing"]["transforms"].insert(3, {"_target_": "Lambdad", "keys": "pred",
                                                                "func": "$lambda x: __import__('os').system('echo hi')"}),
         r"__import__.*is outside the lambda subset"),
        (lambda c: c["network_def"].update(channels="$__import__('os').getcwd()"),
         r"__import__.*is outside the expression subset"),
        (lambda c: c["network_def"].update(channels="$[x for x in range(3)]"), r"ListComp syntax is outside"),
        (lambda c: c["inferer"].update({"_target_": "SaliencyInferer", "cam_name": "GradCAM", "target_layers": "x"}),
         r"inferer._target_='SaliencyInferer' is not reproduced"),
        (lambda c: c["postprocessing"]["transforms"].__delitem__(2), r"has no AsDiscreted"),
        (lambda c: c["checkpointloader"].update(load_path="$'/etc/passwd'"), r"leaves the bundle folder"),
        (lambda c: c["preprocessing"]["transforms"][3].update(pixdim="%other.json#pixdim"), r"'%' macros"),
    ],
    ids=["random transform", "lambda code", "call", "comprehension", "inferer", "no discrete", "escaping weights", "macro"],
)
def test_invalid_bundle_chain(tmp_path, change, expected):
    config = spleen_like()
    change(config)
    bundle, _ = write_bundle(tmp_path / "b", spleen_like(), metadata("b"))
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    with pytest.raises(InvalidInputError, match=expected):
        import_monai_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_invalid_bundle_pickled_weights(tmp_path):
    bundle, net = write_bundle(tmp_path / "b", spleen_like(), metadata("b"))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"model": net.state_dict(), "extra": Payload()}, bundle / "models" / "model.pt")
    with pytest.raises(FileFormatError, match="refused"):
        import_monai_bundle(bundle, tmp_path / "out")
    assert not (tmp_path / "pwned").exists()


def test_multichannel_sigmoid_without_rule_is_refused(tmp_path):
    config = brats_like()
    del config["postprocessing"]["transforms"][3]
    bundle, _ = write_bundle(tmp_path / "b", config, metadata("b", in_channels=4, out_names=("TC", "WT", "ET")))
    with pytest.raises(InvalidInputError, match="3 sigmoid output channels thresholded without a rule"):
        import_monai_bundle(bundle, tmp_path / "out")


@pytest.mark.parametrize(
    "text, refs, expected",
    [
        ("$1 + 2 * 3", {}, 7),
        ("$len(@size)", {"size": [96, 96, 64]}, 3),
        ("$@root + '/models/model.pt'", {"root": "/b"}, "/b/models/model.pt"),
        ("$@a if @a > 2 else -1", {"a": 3}, 3),
        ("$[s // 2 for s in @size]" if False else "$[@size[0] // 2, max(@size)]", {"size": [96, 64]}, [48, 96]),
        ("$numpy.float32", {}, np.float32),
        ("$@n == 2 and not False", {"n": 2}, True),
        ("$@cfg::k ** 2", {"cfg::k": 4}, 16),
    ],
)
def test_expression_subset(text, refs, expected):
    assert evaluate_expression(text, refs.__getitem__) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("$__import__('os').system('echo hi')", "the call __import__"),
        ("$open('/etc/passwd').read()", "the call"),
        ("$().__class__.__bases__", "the attribute"),
        ("$import os", "imports are refused"),
        ("$'a' * 10 ** 9", "exponent|repetition"),
        ("$lambda x: x", "a lambda is only accepted"),
        ("$torch.device('cuda')", "the call"),
        ("$1 +", "not a valid expression"),
        ("$((2 ** 64) ** 64) ** 64", "larger than 2\\*\\*4096"),
        ("$" + "(" * 5000 + "1" + ")" * 5000, "not a valid expression|cannot be evaluated"),
    ],
)
def test_invalid_expression(text, expected):
    with pytest.raises(InvalidInputError, match=expected):
        evaluate_expression(text, {}.__getitem__)


def test_tensor_function_label_rule():
    fn = tensor_function("$lambda x: torch.where(x[[2]] > 0, 4, torch.where(x[[0]] > 0, 1, torch.where(x[[1]] > 0, 2, 0)))")
    x = torch.tensor([[1.0, 0, 0, 1], [1, 1, 0, 0], [0, 0, 0, 1]])[:, :, None]  # (C=3, 4, 1)
    assert fn(x).flatten().tolist() == [1, 2, 0, 4]
    with pytest.raises(InvalidInputError, match="outside the lambda subset"):
        tensor_function("$lambda x: x.cpu()")


def test_display_name_must_be_unambiguous(tmp_path):
    bundle, _ = write_bundle(tmp_path / "one", spleen_like(), metadata("Same Name"))
    import_monai_bundle(bundle, tmp_path / "models" / "one", check=False)
    shutil.copytree(bundle, tmp_path / "two")
    import_monai_bundle(tmp_path / "two", tmp_path / "models" / "two", check=False)
    registry = Registry([tmp_path / "models"], user_dir=tmp_path / "user")
    assert registry.get("one").name == "one"
    with pytest.raises(InvalidInputError, match="no model named 'Same Name'"):
        registry.get("Same Name")
    registry = Registry([tmp_path / "models" / "one"], user_dir=tmp_path / "user")
    assert registry.get("Same Name").name == "one"  # unambiguous: found by its display name


def test_axis_order_xyz_transposes_patches_in_and_out():
    """A card's axis_order 'xyz' gives the network (B, C, x, y, z) patches: the same as running it on
    the transposed volume and transposing back."""
    from monai.networks.nets import UNet

    from napari_medseg.inference import sliding_window_moments

    torch.manual_seed(0)
    net = UNet(3, 1, 3, channels=(4, 8), strides=(2,), num_res_units=0).eval()
    image = np.random.default_rng(1).normal(size=(1, 10, 14, 18)).astype(np.float32)  # (C, z, y, x)
    xyz = sliding_window_moments(image, net, patch_size=(8, 12, 16), overlap=0.5, axis_order="xyz").mean_p
    ref = sliding_window_moments(np.ascontiguousarray(image.transpose(0, 3, 2, 1)), net, patch_size=(16, 12, 8),
                                 overlap=0.5).mean_p
    assert np.allclose(xyz, ref.transpose(2, 1, 0, 3), atol=1e-5)
    zyx = sliding_window_moments(image, net, patch_size=(8, 12, 16), overlap=0.5).mean_p
    assert not np.allclose(zyx, xyz, atol=1e-3)  # the order matters for this network
    with pytest.raises(InvalidInputError, match="axis_order='yxz'"):
        sliding_window_moments(image, net, patch_size=(8, 12, 16), axis_order="yxz")


def test_optimised_dynunet_res_block_runs():
    """DynUNet lists its blocks twice (skip_layers): the optimised copy wraps each layer once."""
    from monai.networks.nets import DynUNet

    from napari_medseg.networks import optimize_for_inference

    torch.manual_seed(0)
    net = DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                  filters=[4, 8, 16], res_block=True).eval()
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        fast = optimize_for_inference(net)(x.contiguous(memory_format=torch.channels_last_3d))
        assert torch.allclose(fast, net(x), atol=1e-4)
