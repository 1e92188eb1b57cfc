"""SE-CKNNA: transform generator vs the official global-RNG code, per-model pipelines/pooling with stand-ins,
DiT probes (time conventions, null label, class-token exclusion), and the offline script on tiny models."""

import csv
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import official_fixture
from PIL import Image

from vfmvae.dit.conditions import ClassLabels
from vfmvae.metrics.se_cknna import (
    AGGREGATE_NAME,
    DINOv2SEExtractor,
    SigLIPSEExtractor,
    TokenizerSEExtractor,
    dit_block_features,
    extract_condition_features,
    se_cknna,
)
from vfmvae.metrics.se_transforms import (
    EquivarianceTransform,
    add_pixel_noise,
    condition_names,
    equivariance_params,
    equivariance_records,
    rotate_quarter_turns,
)

# ------------------------------------------------------------------------------------------------ transforms


def test_equivariance_params_match_official_global_rng():
    for idx in range(60):
        np.random.seed(42 + idx)  # official preprocess.get_transformation_params, verbatim order
        rotation = int(np.random.choice([0, 90, 180, 270]))
        scale = float(np.random.choice([1.0, 0.75, 0.5, 0.25]))
        assert equivariance_params(idx) == EquivarianceTransform(rotation, scale)
    records = equivariance_records(["b", "a", "c"])
    assert list(records) == ["a", "b", "c"] and records["b"] == equivariance_params(1).as_record()
    draws = {(equivariance_params(i).rotation, equivariance_params(i).scale) for i in range(200)}
    assert len(draws) == 16  # every rotation x scale pair occurs


def test_pixel_noise_matches_official_and_shares_pattern():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for sigma in (0.05, 0.2):
        np.random.seed(42 + 7)
        noise = np.random.normal(0, sigma, image.shape).astype(np.float32)
        expected = np.clip(image + noise * 255.0, 0, 255).astype(np.uint8)
        np.testing.assert_array_equal(add_pixel_noise(image, sigma, 7), expected)
    gray = np.full((32, 32, 3), 128, np.uint8)
    d1 = add_pixel_noise(gray, 0.05, 3).astype(float) - 128
    d2 = add_pixel_noise(gray, 0.10, 3).astype(float) - 128
    assert np.corrcoef(d1.ravel(), d2.ravel())[0, 1] > 0.95  # same pattern, different scale
    assert not np.array_equal(add_pixel_noise(gray, 0.1, 3), add_pixel_noise(gray, 0.1, 4))
    assert condition_names() == ["clean", "equivariance", "noise_0.050", "noise_0.100", "noise_0.150", "noise_0.200"]
    with pytest.raises(TypeError, match="uint8"):
        add_pixel_noise(gray.astype(np.float32), 0.1, 0)


def test_rotation_matches_numpy_rot90():
    image = np.arange(2 * 3 * 3).reshape(2, 3, 3).astype(np.float32)  # HWC, non-square
    for rot in (90, 180, 270):
        expected = np.rot90(image, k=rot // 90, axes=(0, 1))
        got = rotate_quarter_turns(torch.from_numpy(image).permute(2, 0, 1), rot).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------------------------- pipelines with stand-ins


class Recorder:
    """Stand-in token_fn: remembers its input, returns tokens whose mean is known."""

    def __init__(self):
        self.inputs = []

    def __call__(self, x):
        self.inputs.append(x.clone())
        # tokens (B, 3, 2): per token the channel means scaled by token index + 1 -> mean = 2 * channel mean
        cm = x.mean((2, 3))[:, :2]
        return torch.stack([cm * (i + 1) for i in range(3)], dim=1)


def _img(seed=0, size=256):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_dinov2_pipeline():
    rec = Recorder()
    ext = DINOv2SEExtractor(rec, resolution=224, patch_size=14)
    images = np.stack([_img(0), _img(1)])
    pooled = ext.clean(images)
    x = rec.inputs[-1]
    assert x.shape == (2, 3, 224, 224)
    pil = np.asarray(Image.fromarray(images[1]).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255
    torch.testing.assert_close(x[1], torch.from_numpy(pil).permute(2, 0, 1))
    torch.testing.assert_close(pooled, 2 * x.mean((2, 3))[:, :2])
    # equivariance: rotate, bilinear (no antialias) to int(224 * scale), reflect-pad to a multiple of 14
    ext100 = DINOv2SEExtractor(rec, resolution=100, patch_size=14)
    ext100.equivariance(images[0], EquivarianceTransform(90, 0.75))
    x = rec.inputs[-1]
    assert x.shape == (1, 3, 84, 84)  # 75 -> padded to 84
    rotated = torch.from_numpy(np.rot90(images[0], 1, axes=(0, 1)).copy()).permute(2, 0, 1).float() / 255
    resized = F.interpolate(rotated[None], size=75, mode="bilinear", align_corners=False)
    torch.testing.assert_close(x[..., :75, :75], resized)
    torch.testing.assert_close(x[..., 75:, :75], resized[..., 65:74, :].flip(-2))  # reflection, edge row not repeated


def test_siglip_and_tokenizer_pipelines():
    rec = Recorder()
    ext = SigLIPSEExtractor(rec)
    image = _img(2)
    ext.clean(image[None])
    assert rec.inputs[-1].shape == (1, 3, 256, 256)
    ext.equivariance(image, EquivarianceTransform(180, 0.5))
    x = rec.inputs[-1]
    assert x.shape == (1, 3, 128, 128)
    flipped = torch.from_numpy(image[::-1, ::-1].copy()).permute(2, 0, 1).float()[None] / 255
    torch.testing.assert_close(x, F.interpolate(flipped, scale_factor=0.5, mode="bilinear", antialias=True))
    ext.equivariance(image, EquivarianceTransform(0, 1.0))
    assert rec.inputs[-1].shape == (1, 3, 256, 256)  # scale 1: no resize at all

    class Posterior:
        def __init__(self, mean):
            self.mean = mean

        def sample(self, generator=None):
            return self.mean + 100.0

    seen = []
    encode = lambda x: seen.append(x.shape) or Posterior(x[:, :2, ::16, ::16])
    tok = TokenizerSEExtractor(encode)
    images = np.stack([_img(3), _img(4)])
    x01 = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(tok.clean(images), x01[:, :2, ::16, ::16].mean((2, 3)) + 100.0)
    tok_mean = TokenizerSEExtractor(encode, use_sample=False)
    torch.testing.assert_close(tok_mean.clean(images), x01[:, :2, ::16, ::16].mean((2, 3)))
    tok.equivariance(images[0], EquivarianceTransform(90, 0.25))
    assert seen[-1] == (1, 3, 64, 64)


def test_extract_conditions_and_aggregate(tmp_path):
    for i in range(12):
        Image.fromarray(_img(i, 32)).save(tmp_path / f"{i:02d}.png")
    from vfmvae.metrics.se_transforms import list_images

    paths = list_images(tmp_path)
    ext = SigLIPSEExtractor(lambda x: x.flatten(2).transpose(1, 2)[:, :, :3] * 1.0)  # tokens = pixels
    feats = extract_condition_features(ext, paths, resolution=32, batch_size=5)
    assert set(feats) == set(condition_names()) and all(v.shape == (12, 3) for v in feats.values())
    noisy = np.stack([add_pixel_noise(_img(i, 32), 0.15, i) for i in range(12)])
    torch.testing.assert_close(feats["noise_0.150"], torch.from_numpy(noisy).float().mean((1, 2)) / 255)
    scores = se_cknna(feats, feats, topk=5)
    assert scores[AGGREGATE_NAME] == pytest.approx(np.mean([scores[c] for c in feats]))
    assert scores["clean"] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(ValueError, match="unknown SE conditions"):
        extract_condition_features(ext, paths, ["rotation"])
    with pytest.raises(KeyError, match="lack conditions"):
        se_cknna(feats, {"clean": feats["clean"]})


# ------------------------------------------------------------------------------------------------ DiT probes


class _StandInDiT:
    """The members of `DiffusionNetwork` the block probe reads, around a recording ``block_features``."""

    class_token_dim = None
    condition = ClassLabels()

    def __init__(self, time_convention):
        self.time_convention, self.calls = time_convention, []

    def block_features(self, x_t, t, y):
        self.calls.append((x_t, t, y))
        return {"block_0": x_t.flatten(2).transpose(1, 2)}


@pytest.mark.parametrize("convention,expected_t", [("data_at_one", 0.7), ("noise_at_one", 0.3)])
def test_dit_probe_time_convention_noise_and_null_label(convention, expected_t):
    net = _StandInDiT(convention)
    latents = torch.randn(5, 4, 3, 3)
    feats = dit_block_features(
        net,
        latents,
        noise_fraction=0.3,
        batch_size=2,
        generator=torch.Generator().manual_seed(0),
    )
    calls = net.calls
    assert len(calls) == 3 and feats["block_0"].shape == (5, 4)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn((2, 4, 3, 3), generator=g)
    torch.testing.assert_close(calls[0][0], 0.7 * latents[:2] + 0.3 * eps)
    assert torch.allclose(calls[0][1], torch.full((2,), expected_t)) and (calls[0][2] == 1000).all()
    with pytest.raises(ValueError, match="time convention"):
        dit_block_features(_StandInDiT("t1"), latents)


def test_real_dit_probes_exclude_class_token():
    from vfmvae.dit import build_lightningdit, build_sit_reg

    torch.manual_seed(0)
    ldit = build_lightningdit("debug").eval()
    feats = dit_block_features(ldit, torch.randn(3, 8, 8, 8))
    assert set(feats) == {"embedder", "block_0", "block_1", "final_layer"}
    assert feats["block_1"].shape == (3, 64) and feats["final_layer"].shape == (3, 8)

    reg = build_sit_reg("debug").eval()
    x, cls = torch.randn(2, 8, 8, 8), torch.randn(2, 32)
    t, y = torch.full((2,), 0.5), torch.full((2,), 1000)
    hidden = reg.block_features((x, cls), t, y)
    out, raw = reg(x, t, y, cls, return_hidden=[1])
    assert hidden["block_1"].shape == (2, 64, 64)  # 1 + 64 tokens -> 64 patch tokens
    torch.testing.assert_close(hidden["block_1"], raw[1][:, 1:])
    with pytest.raises(ValueError, match="class token"):
        dit_block_features(reg, torch.randn(2, 8, 8, 8))


def test_reg_projector_feature_averages_all_tokens_class_token_included():
    """Official `get_block_features_from_reg.py`: `projector_j` = mean over all 1 + N tokens (blocks skip token 0)."""
    from vfmvae.dit import build_sit_reg

    torch.manual_seed(0)
    reg = build_sit_reg("debug").eval()
    x, cls = torch.randn(3, 8, 8, 8), torch.randn(3, 32)
    feats = dit_block_features(reg, x, class_tokens=cls, noise_fraction=0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    x_t = 0.5 * x + 0.5 * torch.randn(x.shape, generator=g)  # latent noise first, then the class token's
    cls_t = 0.5 * cls + 0.5 * torch.randn(cls.shape, generator=g)
    with torch.no_grad():
        out = reg(x_t, torch.full((3,), 0.5), torch.full((3,), 1000), cls_t)
    torch.testing.assert_close(feats["projector_0"], out.projections[0].mean(1))
    # The old rule (patch tokens only) gives another vector: the test would catch it.
    assert not torch.allclose(feats["projector_0"], out.projections[0][:, 1:].mean(1), atol=1e-4)


def test_probe_class_token_is_dinov2_cls_of_the_bilinear_224_image():
    """Official diffusion prefetch: `F.interpolate(img, 224, mode="bilinear", align_corners=False)` (no antialias)."""
    from vfmvae.metrics.se_probe import probe_class_tokens
    from vfmvae.vfm import build_vfm

    torch.manual_seed(0)
    vfm = build_vfm("debug-dinov2", config={"compute_dtype": "float32"})
    images = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = images.float() / 255
    official = F.interpolate(x, size=(56, 56), mode="bilinear", align_corners=False)
    with torch.no_grad():
        want = vfm(official, [-1], return_cls=True)[1][0]
        old = vfm(x, [-1], size=56, interpolation="bicubic", antialias=True, return_cls=True)[1][0]
    got = probe_class_tokens(vfm, images, size=56)
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, old, atol=1e-4)  # bicubic + antialias (the old rule) differs


# ------------------------------------------------------------------------------------------------ the script


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("se_images")
    for i in range(8):
        Image.fromarray(_img(10 + i, 64)).save(folder / f"img_{i:02d}.png")  # resized to --resolution (Lanczos)
    return folder


def _run(repo_root, args):
    cmd = [sys.executable, "-m", "lightning_modules", "se-cknna", "--device", "cpu", "--topk", "5", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_script_tokenizer_and_vfm(repo_root, tmp_path):
    """`make se-cknna DEMO=8`: scikit-image photo crops, tiny random models (the README's command)."""
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(repo_root),
            "se-cknna",
            "DEMO=8",
            f"OUT={tmp_path}",
            "SE_ARGS=--device cpu --topk 5 --noise-levels 0.1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "se_cknna.csv")))
    conds = ["clean", "equivariance", "noise_0.100", AGGREGATE_NAME]
    assert [(r["model"], r["condition"]) for r in rows] == [
        (m, c) for m in ("vfm:debug-siglip", "tokenizer:debug") for c in conds
    ]
    # finite; with n = 8 the unbiased estimator is not bounded by 1, so no range check here
    assert all(np.isfinite(float(r["cknna"])) for r in rows) and (tmp_path / "se_cknna.png").stat().st_size > 0
    assert len(list((tmp_path / "demo_images").glob("*.png"))) == 8


@pytest.mark.slow
def test_script_dit_blocks_and_errors(repo_root, image_dir, tmp_path):
    proc = _run(
        repo_root,
        [
            "--images",
            str(image_dir),
            "--reference",
            "debug-dinov2",
            "--model",
            "lightningdit:debug",
            "--model",
            "reg:debug",
            "--tokenizer",
            "debug",
            "--cls-vfm",
            "debug-dinov2",
            "--cls-vfm-config",
            '{"hidden_size": 32}',
            "--resolution",
            "128",
            "--out-dir",
            str(tmp_path),
        ],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(tmp_path / "se_cknna.csv")))
    reg = [r["feature"] for r in rows if r["model"] == "reg:debug"]
    assert reg == ["embedder", "block_0", "block_1", "block_2", "final_layer", "projector_0"]
    assert {r["condition"] for r in rows} == {"clean_t0.50"}
    bad = _run(
        repo_root,
        ["--images", str(image_dir), "--model", "vfm:debug-siglip", "--num-images", "50", "--out-dir", str(tmp_path)],
    )
    assert bad.returncode != 0 and "fewer than the 50 requested" in bad.stderr


def test_script_loads_released_tokenizer_through_converter(fixtures_dir, repo_root, tmp_path):
    """`tokenizer:official@file.pth` + `--tokenizer-kwargs` builds the official model (checked on the fixture)."""
    from vfmvae.commands import se_cknna as script

    tensors, meta, _ = official_fixture("vfmvae_tiny")
    torch.save({"G_ema": {k[11:]: v for k, v in tensors.items() if k.startswith("state_dict.")}}, tmp_path / "g.pth")
    official = {"generator_kwargs": meta["generator_kwargs"], "vfm_config": meta["siglip_vision_config"]}
    model = script.build_tokenizer("official", str(tmp_path / "g.pth"), "cpu", official)
    with torch.no_grad():
        mean = model.encode(tensors["inputs.img"]).mean
    torch.testing.assert_close(mean, tensors["outputs.mean"], atol=1e-4, rtol=0)
    with pytest.raises(SystemExit, match="tokenizer-kwargs"):
        script.build_tokenizer("official", str(tmp_path / "g.pth"), "cpu", None)
