"""The text-conditioned DiT (vfmvae/dit/text_dit.py): interface, shapes, cross-attention, null-prompt
dropout, CFG through the shared guidance, stored features, FSDP plan, paper scale on `meta`."""

from __future__ import annotations

import pytest
import torch
import yaml

from vfmvae.dit import build_diffusion_network, network_families
from vfmvae.dit.interface import is_diffusion_network
from vfmvae.dit.parallelize import block_classes_of
from vfmvae.dit.text_dit import TextDiTBlock
from vfmvae.text import PAD
from vfmvae.transport.guidance import ClassifierFreeGuidance


def _net(**overrides):
    torch.manual_seed(0)
    net = build_diffusion_network("text_dit", "debug", {"input_size": 4, "num_queries": 3, **overrides})
    # Leave the zero init so the text path matters (the zero cross-attention output starts untrained).
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad and p.abs().sum() == 0 and p.ndim == 2:
                p.normal_(0, 0.05)
    return net


def test_registered_and_implements_the_interface():
    assert "text_dit" in network_families()
    net = _net()
    assert is_diffusion_network(net)
    assert block_classes_of(net) == (TextDiTBlock,)  # the FSDP2 / checkpointing unit
    assert net.latent_shape == (8, 4, 4) and net.condition.null(2, "cpu").shape == (2, 16)


def test_shapes_prompts_matter_and_block_features():
    net = _net().eval()
    x, t = torch.randn(3, 8, 4, 4), torch.rand(3)
    ids = net.condition.encode(["a cat", "a grey brick wall", ""])
    v = net(x, t, ids)
    assert v.shape == x.shape
    same = net(x, t, net.condition.encode(["a cat"] * 3))
    assert (v[1] - same[1]).abs().max() > 1e-4 and torch.equal(v[0], same[0])
    feats = net.block_features(x, t, ids)
    assert set(feats) == {"embedder", "block_0", "block_1", "final_layer"} and feats["block_1"].shape == (3, 16, 64)


def test_null_prompt_dropout():
    net = _net(text_dropout_prob=0.5).train()
    x, t = torch.randn(64, 8, 4, 4), torch.rand(64)
    ids = net.condition.encode(["a cat"] * 64)
    torch.manual_seed(5)
    v = net(x, t, ids)
    torch.manual_seed(5)
    drop = torch.rand(64) < 0.5  # the draw the network makes
    with torch.no_grad():
        ref = net.eval()(x, t, torch.where(drop[:, None], torch.full_like(ids, PAD), ids))
    torch.testing.assert_close(v.detach(), ref, atol=1e-6, rtol=0)
    assert 10 < int(drop.sum()) < 54
    forced = net(x[:2], t[:2], ids[:2], force_drop_ids=torch.tensor([1, 0]))
    null = net(x[:1], t[:1], net.condition.null(1, "cpu"))
    torch.testing.assert_close(forced[:1], null, atol=1e-6, rtol=0)


def test_cfg_through_the_shared_guidance():
    net = _net().eval()
    x, t = torch.randn(2, 8, 4, 4), torch.full((2,), 0.5)
    ids = net.condition.encode(["a cat", "a red flower"])
    cfg = ClassifierFreeGuidance(
        net.velocity, 3.0, convention=net.time_convention, null_condition=net.condition.null_like
    )
    with torch.no_grad():
        guided = cfg(x, t, ids)
        cond, uncond = net(x, t, ids), net(x, t, net.condition.null(2, "cpu"))
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=0)


def test_stored_features_equal_prompt_ids_for_siglip_and_refused_for_queries():
    net = _net(text_encoder="siglip_text").eval()
    x, t = torch.randn(2, 8, 4, 4), torch.rand(2)
    ids = net.condition.encode(["a cat", ""])
    feats = net.text_encoder(ids)
    torch.testing.assert_close(net(x, t, feats), net(x, t, ids), atol=1e-6, rtol=0)
    torch.testing.assert_close(net.condition.null_like(feats), torch.zeros_like(feats))
    with pytest.raises(ValueError, match="trained parts"):
        _net()(x, t, torch.zeros(2, 3, 32))


def test_training_through_the_objective_trains_only_trainable_parts():
    from vfmvae.transport import DiffusionObjective, TransportConfig

    net = _net().train()
    objective = DiffusionObjective.from_transport(TransportConfig())
    ids = net.condition.encode(["a cat", "a dog"])
    terms = objective(net, torch.randn(2, 8, 4, 4), ids)
    terms["total"].backward()
    assert net.text_encoder.queries.grad is not None and net.text_encoder.queries.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.text_encoder.frozen.parameters())


def test_paper_config_builds_on_meta():
    cfg = yaml.safe_load(open("configs/t2i/paper.yaml"))["model"]["init_args"]
    overrides = {**cfg["network_overrides"], "text_encoder_path": None, "allow_random_text_encoder": True}
    with torch.device("meta"):
        net = build_diffusion_network(cfg["network"], cfg["preset"], overrides)
    trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in net.text_encoder.frozen.parameters())
    assert net.latent_shape == (32, 16, 16) and net.num_blocks == 28
    assert 7e8 < trainable < 1.2e9 and frozen > 3e9  # XL/1 + cross-attention; a 3B-class frozen LM


def test_repa_projector_for_the_alignment_callback():
    from vfmvae.transport import DiffusionObjective, TransportConfig

    torch.manual_seed(0)
    net = build_diffusion_network(
        "text_dit",
        "debug",
        {"input_size": 4, "num_queries": 3},
        repa_encoder_depth=1,
        repa_projector_dim=32,
        repa_z_dim=24,
    ).train()
    assert net.alignment_dim == 24
    targets = torch.randn(2, 16, 24)  # what the joint-alignment callback writes: one target per patch token
    alignment = {"proj_targets": [targets], "cls_target": None, "proj_weight": 0.5, "cls_weight": 0.0}
    terms = DiffusionObjective.from_transport(TransportConfig())(
        net, torch.randn(2, 8, 4, 4), net.condition.encode(["a cat", "a dog"]), alignment
    )
    assert "proj" in terms and -1.0 <= float(terms["proj"]) <= 1.0
    terms["total"].backward()
    assert net.projectors[0][0].weight.grad.abs().sum() > 0
    assert "projector_0" in net.block_features(torch.randn(1, 8, 4, 4), torch.rand(1), net.condition.null(1, "cpu"))
