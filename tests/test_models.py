"""The model zoo: architectures pinned by parameter counts, shapes, init and naming.

The counts for the paper's models come from the paper's model table, docs/science.md#models (and match the
original code); the others are derived by arithmetic in the comments.
VGG16 is built once per session because it has 134M parameters.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rarespur.models import MODEL_NAMES, build_model, count_parameters, resolve_model_name
from rarespur.models.normalization import CIFAR_MEAN, CIFAR_STD, Normalize
from rarespur.models.vgg import VGG16_CONFIG, _make_features

from conftest import compose_config

MNIST = (1, 28, 28)
CIFAR = (3, 32, 32)

# VGG16 with 10 classes, by arithmetic:
#   convs (3x3 weights + bias): 3*64*9+64 = 1,792; 64*64*9+64 = 36,928;
#     64*128*9+128 = 73,856; 128*128*9+128 = 147,584; 128*256*9+256 = 295,168;
#     2 x (256*256*9+256) = 1,180,160; 256*512*9+512 = 1,180,160;
#     5 x (512*512*9+512) = 11,799,040                        -> 14,714,688
#   classifier: 25088*4096+4096 = 102,764,544; 4096*4096+4096 = 16,781,312;
#     4096*10+10 = 40,970                                      -> 119,586,826
#   total 14,714,688 + 119,586,826 = 134,301,514 (torchvision's VGG16 is
#   138,357,544 with 1000 classes: 138,357,544 - 4097*1000 + 4097*10 - 0 agrees).
VGG16_PARAMS = 134_301_514

PARAM_COUNTS = {
    # in->256->classes: 784*256+256 + 256*10+10
    ("mlp1x256", MNIST): 203_530,
    # one more 256x256 layer: + 65,792
    ("mlp2x256", MNIST): 269_322,
    ("mlp3x256", MNIST): 335_114,
    ("mlp3x512", MNIST): 932_362,
    ("cnn", MNIST): 312_202,
    ("resnet20", CIFAR): 269_722,
    ("resnet32", CIFAR): 464_154,
    ("resnet110", CIFAR): 1_727_962,
    # SiH's MLP VAE encoder + head: d*100+100 + 100*100+100 + 2 x (100*100+100) + 100*10+10
    ("vae_mlp", MNIST): 109_810,
    ("vae_mlp", (3, 28, 28)): 266_610,
    # convs 3*32*16+32 + 32*64*16+64 + 64*128*16+128, 2048*256+256, 2 x (256*128+128), 128*10+10
    ("vae_conv", CIFAR): 757_226,
    # SiH's ResNet_VAE encoder + head as the authors build it, less the two Linear layers it defines and never calls
    ("vae_resnet", CIFAR): 13_273_482,
}


@pytest.fixture(scope="module")
def vgg16() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("vgg16", CIFAR, 10).eval()


def test_vgg_arithmetic_comment_is_right() -> None:
    convs, c = 0, 3
    for v in VGG16_CONFIG:
        if v != "M":
            convs += c * int(v) * 9 + int(v)
            c = int(v)
    assert convs == 14_714_688
    assert convs + 25088 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10 == VGG16_PARAMS
    assert 138_357_544 - 4097 * 1000 + 4097 * 10 == VGG16_PARAMS


def test_model_names() -> None:
    """The builders registered are the names users can type (rarespur.config.names.MODELS), each one pinned by a
    parameter count above."""
    from rarespur.config.names import MODELS

    assert MODEL_NAMES == tuple(sorted(MODEL_NAMES)) == tuple(sorted(MODELS))
    assert {name for name, _ in PARAM_COUNTS} | {"vgg16"} == set(MODEL_NAMES)


@pytest.mark.parametrize(("name", "shape"), list(PARAM_COUNTS))
def test_parameter_counts(name: str, shape: tuple[int, int, int]) -> None:
    assert count_parameters(build_model(name, shape, 10)) == PARAM_COUNTS[(name, shape)]


def test_vgg16_parameter_count(vgg16: torch.nn.Module) -> None:
    assert count_parameters(vgg16) == VGG16_PARAMS


@pytest.mark.parametrize("name", ["resnet20", "resnet32", "resnet110"])
def test_resnet_count_does_not_depend_on_image(name: str) -> None:
    # The stem always has 3 input channels and the head pools globally.
    assert count_parameters(build_model(name, MNIST, 10)) == PARAM_COUNTS[(name, CIFAR)]


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_outputs_and_batch_norm_forward(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7)
    x = torch.rand(3, *shape)
    assert model.train()(x).shape == (3, 7)
    with torch.no_grad():
        assert model.eval()(x).shape == (3, 7)


@pytest.mark.parametrize("name", ["mlp", "mlpv2", "largemlp", "largemlpv2", "cnn002", "resnet110"])
@pytest.mark.parametrize("shape", [MNIST, CIFAR])
def test_output_shapes(name: str, shape: tuple[int, int, int]) -> None:
    model = build_model(name, shape, 7).eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 7)
    assert out.dtype == torch.float32


def test_vgg16_output_shape(vgg16: torch.nn.Module) -> None:
    with torch.no_grad():
        out = vgg16(torch.rand(2, *CIFAR))
    assert out.shape == (2, 10)
    assert torch.isfinite(out).all()


def test_vgg16_small_images_keep_a_feature_map() -> None:
    # Floor-mode pools would shrink 28x28 to 0x0 (the original crashes);
    # the builder switches to ceil mode below 32x32: 28->14->7->4->2->1.
    feats = _make_features(VGG16_CONFIG, ceil_mode=True)
    with torch.no_grad():
        assert feats(torch.rand(1, 3, 28, 28)).shape == (1, 512, 1, 1)
        # For 32x32 both modes give identical maps, so CIFAR matches the original.
        floor = _make_features(VGG16_CONFIG, ceil_mode=False)
        floor.load_state_dict(feats.state_dict())
        x = torch.rand(2, 3, 32, 32)
        assert torch.equal(feats(x), floor(x))


def test_cnn_feature_size_follows_input_shape() -> None:
    # Valid convs and floor pools: 28->26->24->12->10->8->4, 64*4*4 = 1024 as
    # in the original; 32->30->28->14->12->10->5 gives 64*5*5 = 1600.
    assert build_model("cnn002", MNIST, 10).classifier.fc1.in_features == 1024
    assert build_model("cnn002", CIFAR, 10).classifier.fc1.in_features == 1600
    assert build_model("cnn002", CIFAR, 10).feature_extractor.conv1.in_channels == 3


def test_cnn_last_layer_starts_at_zero() -> None:
    model = build_model("cnn002", MNIST, 10).eval()
    fc3 = model.classifier.fc3
    assert torch.count_nonzero(fc3.weight) == 0 and torch.count_nonzero(fc3.bias) == 0
    # ... so every logit is 0 and the initial prediction is uniform.
    with torch.no_grad():
        assert torch.count_nonzero(model(torch.rand(4, *MNIST))) == 0
    # The convolutions are Kaiming-initialized with zero bias.
    conv1 = model.feature_extractor.conv1
    assert torch.count_nonzero(conv1.bias) == 0 and conv1.weight.std() > 0


@pytest.mark.parametrize("name", ["mlp", "largemlp"])
def test_mlp_flattens_channels_last(name: str) -> None:
    c, h, w = 3, 4, 5
    model = build_model(name, (c, h, w), 10)
    seen: list[torch.Tensor] = []
    model.hidden.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    x = torch.zeros(1, c, h, w)
    x[0, 1, 2, 3] = 1.0  # channel 1, row 2, column 3
    model(x)
    (flat,) = seen
    # NHWC flattening puts pixel (h, w, c) at column (h*W + w)*C + c.
    expected_col = (2 * w + 3) * c + 1
    assert torch.nonzero(flat[0]).flatten().tolist() == [expected_col]
    # Generally: the same as the original's NumPy reshape of NHWC arrays.
    x = torch.rand(2, c, h, w)
    model(x)
    nhwc = x.numpy().transpose(0, 2, 3, 1).reshape(2, -1)
    np.testing.assert_array_equal(seen[-1].numpy(), nhwc)


def test_mlp_rejects_wrong_image_shape() -> None:
    with pytest.raises(ValueError, match="expected input"):
        build_model("mlp", MNIST, 10)(torch.rand(2, *CIFAR))


def test_state_dict_keys_follow_the_original() -> None:
    assert list(build_model("largemlp", MNIST, 10).state_dict()) == [
        "hidden.weight",
        "hidden.bias",
        "hidden2.weight",
        "hidden2.bias",
        "hidden3.weight",
        "hidden3.bias",
        "fc.weight",
        "fc.bias",
    ]
    cnn_keys = set(build_model("cnn002", MNIST, 10).state_dict())
    assert {"feature_extractor.conv1.weight", "feature_extractor.conv4.bias", "classifier.fc3.weight"} <= cnn_keys
    res_keys = set(build_model("resnet20", CIFAR, 10).state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer3.2.bn2.weight",
        "linear.bias",
    } <= res_keys
    # Normalization statistics are not state: no extra keys beyond the original's.
    assert not any("normal" in k or "shortcut" in k for k in res_keys)


def test_vgg16_state_dict_keys(vgg16: torch.nn.Module) -> None:
    keys = set(vgg16.state_dict())
    assert {"features.0.weight", "features.28.bias", "classifier.0.weight", "classifier.6.weight"} <= keys
    assert len(keys) == 2 * (13 + 3)


def test_resnet_option_a_shortcut_has_no_weights() -> None:
    model = build_model("resnet20", CIFAR, 10)
    first_of_stage2 = model.layer2[0]
    assert sum(p.numel() for p in first_of_stage2.shortcut.parameters()) == 0
    x = torch.rand(2, 16, 8, 8)
    y = first_of_stage2.shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, 8:24], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :8]) == 0 and torch.count_nonzero(y[:, 24:]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normalization_matches_python_floats(dtype: torch.dtype) -> None:
    norm = Normalize(CIFAR_MEAN, CIFAR_STD)
    x = torch.rand(2, 3, 4, 4, dtype=dtype)
    mean = torch.tensor(CIFAR_MEAN, dtype=dtype)[None, :, None, None]
    std = torch.tensor(CIFAR_STD, dtype=dtype)[None, :, None, None]
    assert torch.equal(norm(x), (x - mean) / std)
    # Grayscale broadcasts to three channels, as in the original on MNIST.
    assert norm(x[:, :1]).shape == (2, 3, 4, 4)


def test_seeded_build_is_reproducible() -> None:
    torch.manual_seed(0)
    a = build_model("resnet20", CIFAR, 10).state_dict()
    torch.manual_seed(0)
    b = build_model("resnet20", CIFAR, 10).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("MLP", "mlp1x256"),
        ("small_mlp", "mlp1x256"),
        ("mlp", "mlp1x256"),
        ("MLPv2", "mlp2x256"),
        ("LargeMLP", "mlp3x256"),
        ("paper_mlp", "mlp3x256"),
        ("LargeMLPv2", "mlp3x512"),
        ("large_mlp", "mlp3x512"),
        ("CNN002", "cnn"),
        ("cnn002", "cnn"),
        ("altResNet20Norm02", "resnet20"),
        ("altResNet32Norm02", "resnet32"),
        ("altResNet110Norm02", "resnet110"),
        ("ResNet20", "resnet20"),
        ("Vgg16Norm02", "vgg16"),
        ("VGG16", "vgg16"),
    ],
)
def test_alias_resolution(alias: str, canonical: str) -> None:
    assert resolve_model_name(alias) == canonical


def test_original_names_build_the_same_network() -> None:
    torch.manual_seed(0)
    a = build_model("LargeMLP", MNIST, 10)
    torch.manual_seed(0)
    b = build_model("largemlp", MNIST, 10)
    assert count_parameters(a) == 335_114
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("bad", ["resnet18", "altResNet20", "", "mlp3"])
def test_unknown_name_lists_valid_names(bad: str) -> None:
    # altResNet20 (without Norm02) is a different, unnormalized network in the
    # original; it is deliberately not an alias of resnet20.
    with pytest.raises(ValueError, match="unknown model") as err:
        build_model(bad, MNIST, 10)
    for name in MODEL_NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("resnet20", (2, 32, 32)),  # CIFAR statistics need 1 or 3 channels
        ("vgg16", (4, 32, 32)),
        ("cnn002", (1, 12, 12)),  # too small for two valid-conv pairs
        ("mlp", (28, 28)),  # not (C, H, W)
        ("mlp", (1, 0, 28)),
    ],
)
def test_bad_shapes_raise(name: str, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError):
        build_model(name, shape, 10)  # type: ignore[arg-type]


def test_the_resnet_vae_decoder_has_the_authors_count_and_draws_32x32_images() -> None:
    """SiH's ResNet18Dec over the two concatenated 512-unit latents: 50,154,051 parameters as in the authors'
    module/resnet_vae.py, less its unused Linear (1,049,600)."""
    model = build_model("vae_resnet", CIFAR, 10)
    decoder = model.decoder(2 * model.latent_dim)
    assert sum(p.numel() for p in decoder.parameters()) == 50_154_051
    images = decoder(torch.randn(4, 2 * model.latent_dim))
    assert images.shape == (4, *CIFAR) and 0 <= images.min() and images.max() <= 1
    with pytest.raises(ValueError, match="3x32x32"):
        build_model("vae_resnet", (3, 28, 28), 10)


def test_bad_num_classes_raises() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        build_model("mlp", MNIST, 0)


def test_config_files_name_registered_models() -> None:
    """conf/model holds one file per canonical model; every other accepted spelling (the original code's
    and the paper's names, from rarespur.config.names) is a model= option too and composes to its canonical name."""
    from rarespur.config.names import model_aliases

    conf = Path(__file__).resolve().parents[1] / "conf"
    options = sorted(p.stem for p in (conf / "model").glob("*.yaml"))
    assert options == sorted(MODEL_NAMES)
    aliases = model_aliases()
    assert {"largemlp", "paper_mlp", "mlp", "cnn002", "altresnet20norm02", "large_mlp"} <= set(aliases)
    for option in [*options, *aliases]:
        name = compose_config(f"model={option}", config_dir=conf).model.name
        assert name in MODEL_NAMES and resolve_model_name(option) == name, option
