"""Slimmable ViT: torchvision parity, exact extraction, slicing by whole heads, FLOPs against the closed
form, DeiT-Ti's parameter count, gates, BN recalibration, and train -> search -> export on ``vit_test``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from search_spaces import SearchSpace, SubnetConfig, get_space
from supernet import build_supernet
from supernet.nn.bn import recalibrate_bn
from supernet.nn.flops import count_flops, count_params, per_input_effective_flops
from supernet.nn.vit import ViTSuperNet

with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis

pytestmark = pytest.mark.usefixtures("single_thread")

DEIT_TINY_PARAMS = 5_717_416  # timm vit_tiny_patch16_224 / DeiT-Ti, with its 1000-class head
DEIT_TINY_HEAD_PARAMS = 192 * 1000 + 1000


def randomize_parameters(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter ~ N(0, 0.3^2) (in place): LayerNorm affines, biases, class token and position
    embeddings start at constants that would hide a wrong slice."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model


def closed_form_flops(space: SearchSpace, cfg: SubnetConfig, resolution: int) -> int:
    """fvcore FLOPs of a ViT sub-network by hand (one multiply-add = one flop, LayerNorm 5 per element).

    Patch embedding, then per block: norm1, qkv, q k^T, attention x v, projection, norm2, fc1, fc2; then
    the final norm of the class token. GELU, softmax, additions are free.
    """
    patch = space.stem_stride
    patches = (resolution // patch) ** 2
    tokens = patches + 1
    embed = cfg.channels["patch_embed.proj"]
    flops = patches * embed * 3 * patch * patch
    for block in space.blocks:
        attention, hidden = cfg.channels[f"{block.name}.attn.qkv"], cfg.channels[f"{block.name}.mlp.fc1"]
        flops += 2 * tokens * embed * 5  # norm1, norm2
        flops += tokens * embed * 3 * attention  # qkv
        flops += 2 * tokens * tokens * attention  # q k^T and attention x v, summed over heads
        flops += tokens * attention * embed  # proj
        flops += 2 * tokens * embed * hidden  # fc1, fc2
    return flops + embed * 5  # final norm, class token only


def torchvision_reference(net: ViTSuperNet, cfg: SubnetConfig, resolution: int) -> VisionTransformer:
    """torchvision's ViT of ``cfg``'s shape holding ``net``'s weights, sliced here independently of
    :meth:`ViTSuperNet.extract`. torchvision ties the attention width to the embedding width, so the
    config needs ``heads * head_dim == embedding`` and one MLP width for all blocks."""
    space = net.space
    embed = cfg.channels["patch_embed.proj"]
    attention = {cfg.channels[f"{b.name}.attn.qkv"] for b in space.blocks}
    hidden = {cfg.channels[f"{b.name}.mlp.fc1"] for b in space.blocks}
    assert attention == {embed} and len(hidden) == 1
    (mlp_dim,) = hidden
    reference = VisionTransformer(image_size=resolution, patch_size=space.stem_stride, num_layers=len(space.blocks),
                                  num_heads=embed // space.head_dim, hidden_dim=embed, mlp_dim=mlp_dim)
    reference.heads = nn.Identity()
    full = space.layer("blocks.0.attn.qkv").max_channels
    state = net.state_dict()
    mapped = {
        "class_token": state["cls_token"][..., :embed],
        "conv_proj.weight": state["patch_embed.proj.weight"][:embed],
        "conv_proj.bias": state["patch_embed.proj.bias"][:embed],
        "encoder.pos_embedding": state["pos_embed"][..., :embed],
        "encoder.ln.weight": state["norm.weight"][:embed],
        "encoder.ln.bias": state["norm.bias"][:embed],
    }
    for index in range(len(space.blocks)):
        ours, theirs = f"blocks.{index}.", f"encoder.layers.encoder_layer_{index}."
        qkv_weight = state[ours + "attn.qkv.weight"].reshape(3, full, -1)
        qkv_bias = state[ours + "attn.qkv.bias"].reshape(3, full)
        mapped |= {
            theirs + "ln_1.weight": state[ours + "norm1.weight"][:embed],
            theirs + "ln_1.bias": state[ours + "norm1.bias"][:embed],
            theirs + "self_attention.in_proj_weight": torch.cat([qkv_weight[i, :embed, :embed] for i in range(3)]),
            theirs + "self_attention.in_proj_bias": torch.cat([qkv_bias[i, :embed] for i in range(3)]),
            theirs + "self_attention.out_proj.weight": state[ours + "attn.proj.weight"][:embed, :embed],
            theirs + "self_attention.out_proj.bias": state[ours + "attn.proj.bias"][:embed],
            theirs + "ln_2.weight": state[ours + "norm2.weight"][:embed],
            theirs + "ln_2.bias": state[ours + "norm2.bias"][:embed],
            theirs + "mlp.0.weight": state[ours + "mlp.fc1.weight"][:mlp_dim, :embed],
            theirs + "mlp.0.bias": state[ours + "mlp.fc1.bias"][:mlp_dim],
            theirs + "mlp.3.weight": state[ours + "mlp.fc2.weight"][:embed, :mlp_dim],
            theirs + "mlp.3.bias": state[ours + "mlp.fc2.bias"][:embed],
        }
    reference.load_state_dict(mapped, strict=True)
    return reference.eval()


def _assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(1.0, expected.abs().max().item()))


# -- the network --------------------------------------------------------------------------------------
def test_max_width_equals_torchvision_vit() -> None:
    space = get_space("vit_test")
    net = randomize_parameters(build_supernet(space, with_gates=False)).eval()
    x = torch.randn(3, 3, 32, 32)
    net.set_min()
    with torch.no_grad():
        net(x)
        cfg = net.set_max()  # set_active after another config, then max: the full network again
        _assert_close(net(x), torchvision_reference(net, cfg, 32)(x))


def test_sub_network_equals_torchvision_vit_of_its_shape() -> None:
    """One 16-wide head, embedding 16, MLP 48: checks q/k/v slicing per third and the LayerNorm over
    the active width against an implementation that knows nothing of slicing."""
    space = get_space("vit_test")
    net = randomize_parameters(build_supernet(space, with_gates=False)).eval()
    widths = {"patch_embed.proj": 16, "blocks.0.attn.qkv": 16, "blocks.1.attn.qkv": 16, "blocks.0.mlp.fc1": 48,
              "blocks.1.mlp.fc1": 48}
    cfg = space.from_decisions(widths)
    net.set_active(cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(net(x), torchvision_reference(net, cfg, 32)(x))


@pytest.mark.parametrize("gates", [False, True], ids=["gates_off", "gates_on"])
@pytest.mark.parametrize("resolution", [32, 16], ids=["native", "interpolated_positions"])
def test_extraction_equals_the_supernet_at_random_configs(gates: bool, resolution: int, randomize_bn: Callable) -> None:
    space = get_space("vit_test")
    net = randomize_bn(randomize_parameters(build_supernet(space, with_gates=gates))).eval()
    x = torch.randn(2, 3, resolution, resolution)
    rng = np.random.default_rng(resolution)
    for _ in range(4):
        cfg = space.sample(rng, gates=gates)
        net.set_active(cfg)
        with torch.no_grad():
            expected = net(x)
            sub = net.extract(cfg)
            actual = sub(x)
        assert expected.shape == (2, cfg.channels["patch_embed.proj"]) == (2, sub.feature_dim)
        assert type(sub) is ViTSuperNet and count_params(sub) <= count_params(net)
        _assert_close(actual, expected)
        # the extracted network is exactly what an export rebuilds: the narrowed space, these weights
        rebuilt = build_supernet(space.narrow(cfg.channels), with_gates=gates)
        rebuilt.load_state_dict(sub.state_dict())
        rebuilt.set_active(space.narrow(cfg.channels).config(cfg.channels, cfg.gate_thresholds, cfg.resolution))
        with torch.no_grad():
            torch.testing.assert_close(rebuilt.eval()(x), actual, rtol=0, atol=0)


def test_attention_is_sliced_by_whole_heads() -> None:
    """One head active: only head 0's rows of q, k and v and head 0's projection columns get gradient."""
    space = get_space("vit_test")
    net = build_supernet(space, with_gates=False).train()
    cfg = space.from_decisions({"patch_embed.proj": 32, "blocks.0.attn.qkv": 16, "blocks.1.attn.qkv": 32,
                                "blocks.0.mlp.fc1": 128, "blocks.1.mlp.fc1": 128})
    net.set_active(cfg)
    net(torch.randn(2, 3, 32, 32)).square().sum().backward()
    attention = net.blocks[0].attn
    rows = attention.qkv.weight.grad.abs().sum(dim=1).reshape(3, 2, 16)  # (q/k/v, head, head_dim)
    assert (rows[:, 0] > 0).all() and (rows[:, 1] == 0).all()
    assert (attention.qkv.bias.grad.reshape(3, 2, 16)[:, 1] == 0).all()
    columns = attention.proj.weight.grad.abs().sum(dim=0)
    assert (columns[:16] > 0).all() and (columns[16:] == 0).all()
    with torch.no_grad():  # and the second head matters when it is active
        one = net.eval()(torch.ones(1, 3, 32, 32))
        net.set_active(space.max_config())
        assert not torch.allclose(net(torch.ones(1, 3, 32, 32)), one)


# -- FLOPs and parameters -----------------------------------------------------------------------------
def test_flops_equal_the_closed_form() -> None:
    space = get_space("vit_test")
    net = build_supernet(space, with_gates=False)
    rng = np.random.default_rng(3)
    for cfg in (space.max_config(), space.min_config(), space.sample(rng), space.sample(rng)):
        sub = net.extract(cfg)
        for resolution in (32, 16):
            assert count_flops(sub, resolution) == closed_form_flops(space, cfg, resolution)
    # fvcore alone skips scaled_dot_product_attention: the handle adds exactly the two matmuls
    cfg = space.max_config()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bare = FlopCountAnalysis(net.eval(), torch.zeros(1, 3, 32, 32))
        bare.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        bare_total = int(bare.total())
    tokens = 17
    matmuls = sum(2 * tokens * tokens * cfg.channels[f"{b.name}.attn.qkv"] for b in space.blocks)
    assert count_flops(net, 32) - bare_total == matmuls > 0


def test_vit_tiny_flops_and_parameters_are_deit_tiny() -> None:
    """DeiT-Ti at 224 px: 1,258,031,040 FLOPs without a classifier (timm's fvcore figure, 1.26 G, also
    counts the final norm on all 197 tokens and the 192 x 1000 head); 5,717,416 parameters with the head."""
    space = get_space("vit_tiny")
    net = build_supernet(space, num_classes=1000, with_gates=False)
    assert count_params(net) == DEIT_TINY_PARAMS
    encoder = build_supernet(space, with_gates=False)
    assert count_params(encoder) == DEIT_TINY_PARAMS - DEIT_TINY_HEAD_PARAMS == 5_524_416
    flops = count_flops(encoder, 224)
    assert flops == closed_form_flops(space, space.max_config(), 224) == 1_258_031_040
    # timm's convention: final norm on every token (197 x 192 x 5) and the head (192 x 1000)
    assert flops - 192 * 5 + 197 * 192 * 5 + 192 * 1000 == 1_258_411_200
    # torchvision's ViT of the same shape has the same parameters (it has no head here)
    reference = VisionTransformer(image_size=224, patch_size=16, num_layers=12, num_heads=3, hidden_dim=192,
                                  mlp_dim=768)
    reference.heads = nn.Identity()
    assert count_params(reference) == count_params(encoder)


# -- gates ----------------------------------------------------------------------------------------------
def test_gathered_gates_equal_masked_and_effective_flops_are_fvcore_counts(make_gated_subnet: Callable) -> None:
    _, sub, _ = make_gated_subnet(get_space("vit_test"), seed=1)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        masked = sub(x)
    kept = torch.cat([block.last_mask for block in sub.gated_blocks()], dim=1)
    assert 0 < kept.sum() < kept.numel()
    effective = per_input_effective_flops(sub, x)
    static = count_flops(sub, 32)
    assert (effective < static).all()
    sub.set_gate_mode("gathered")
    for i in range(x.shape[0]):
        with torch.no_grad():
            _assert_close(sub(x[i : i + 1]), masked[i : i + 1])
        assert count_flops(sub, inputs=x[i : i + 1]) == effective[i]
    sub.set_gate_mode("masked")


def test_a_gate_that_drops_every_channel(make_gated_subnet: Callable) -> None:
    _, sub, _ = make_gated_subnet(get_space("vit_test"), seed=2, dead_block=0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        masked = sub(x)
        assert sub.blocks[0].last_mask.sum() == 0
        sub.set_gate_mode("gathered")
        _assert_close(sub(x[:1]), masked[:1])
        assert count_flops(sub, inputs=x[:1]) == per_input_effective_flops(sub, x[:1])[0]
    sub.set_gate_mode("masked")


def test_bn_recalibration_changes_nothing_in_an_ungated_vit() -> None:
    net = randomize_parameters(build_supernet("vit_test", with_gates=False)).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        state = {k: v.clone() for k, v in net.state_dict().items()}
    recalibrate_bn(net, torch.randn(16, 3, 32, 32), 16, batch_size=8)
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(net(x), before, rtol=0, atol=0)


# -- train -> search -> export ------------------------------------------------------------------------
def test_train_search_and_export_vit_test(tmp_path: Path) -> None:
    """Two training steps (BYOL, gates on), a 4-trial search and an export (torch.export; ONNX if
    onnxruntime is installed) of ``vit_test``; the rebuilt export equals the supernet at its config."""
    from nas.export import main as export_main
    from nas.deploy.program import load_exported
    from nas.search import main as search_main
    from supernet.io.checkpoint import load_supernet
    from supernet.train import load_train_settings
    from supernet.training import train

    run = tmp_path / "run"
    train(load_train_settings([
        "recipe=none", "model=vit_test", "data.max_images=256", "data.holdout_size=200", "data.resolution=32",
        "batch_size=32", "knn.enabled=false", "progress=false", "ssl.proj_hidden_dim=64", "ssl.pred_hidden_dim=64",
        "ssl.proj_dim=32", "epochs=1", "max_steps=2", f"out_dir={run}",
    ]))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(record for record in metrics if record["kind"] == "step")
    assert np.isfinite(step["loss"]) and "gated/budget" in step
    small = ["oracle.bank_size=200", "oracle.calibration_images=64", "latency.repeats=2", "latency.warmup=1",
             "effective_flops_images=32"]
    search = tmp_path / "search"
    assert search_main(["--checkpoint", str(run / "checkpoint.pt"), "--budget", "400KFLOPs", "--trials", "4",
                        "--device", "cpu", "--out", str(search), "--no-progress", *small]) == 0
    best = json.loads((search / "best.json").read_text())
    assert best["config"]["space"] == "vit_test"
    onnx = ["--onnx"] if _has_onnxruntime() else []
    export = tmp_path / "export"
    source = ["--from", str(search / "best.json")]
    assert export_main([*source, "--out", str(export), "--device", "cpu", *onnx, *small]) == 0
    assert (export / "model.pt2").is_file() and (not onnx or (export / "model.onnx").is_file())
    network, record = load_exported(export)
    cfg = SubnetConfig.from_dict(record["config"])
    supernet, _ = load_supernet(run / "checkpoint.pt")
    supernet.eval().set_active(cfg)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _assert_close(network(x), supernet(x))


def _has_onnxruntime() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_resolution_that_does_not_split_into_patches_is_one_setup_error(tmp_path: Path) -> None:
    from supernet.train import load_train_settings
    from supernet.training import train
    from supernet.training.setup import SetupError

    settings = load_train_settings(["recipe=none", "model=vit_test", "data.max_images=256", "data.holdout_size=200",
                                    "data.resolution=28", "batch_size=32", "knn.enabled=false", "progress=false",
                                    f"out_dir={tmp_path}"])
    with pytest.raises(SetupError, match="data.resolution: 28 px is not a multiple of vit_test's 8-px patch"):
        train(settings)
