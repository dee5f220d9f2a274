from pathlib import Path

import pytest
import torch

from neurotrain.config import load_config
from neurotrain.errors import ConfigError
from neurotrain.tasks.deflare.losses import VoxelLoss
from neurotrain.tasks.deflare.models import TrueResidualUNet3D, build_model, count_parameters
from neurotrain.tasks.deflare.config import DeflareConfig

REPO = Path(__file__).resolve().parents[3]


def test_output_equals_input_at_init_any_sensor_size():
    torch.manual_seed(0)
    m = TrueResidualUNet3D(f_maps=[4, 8, 16], num_levels=3, num_groups=2).eval()
    x = torch.randint(-3, 4, (2, 1, 8, 21, 35)).float()
    y = m(x)
    assert y.shape == x.shape and torch.equal(y, x)
    assert torch.count_nonzero(m.backbone.net.final_conv.weight) == 0
    assert isinstance(m.backbone.net.final_activation, torch.nn.Identity)


def test_residual_can_be_negative_after_training_step():
    torch.manual_seed(0)
    m = TrueResidualUNet3D(f_maps=[4, 8], num_levels=2, num_groups=2, dropout_prob=0.0)
    x = torch.ones(1, 1, 8, 8, 8)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for _ in range(3):
        loss = (m(x) - 0).square().mean()  # push towards zero: residual must go negative
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert m.residual(x).mean() < 0


def test_gradient_checkpointing_gives_same_output_and_gradients():
    torch.manual_seed(0)
    a = TrueResidualUNet3D(f_maps=[4, 8], num_levels=2, num_groups=2, dropout_prob=0.0)
    with torch.no_grad():
        a.backbone.net.final_conv.weight.normal_()
    b = TrueResidualUNet3D(f_maps=[4, 8], num_levels=2, num_groups=2, dropout_prob=0.0, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 1, 8, 10, 12)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb)
    ya.sum().backward()
    yb.sum().backward()
    ga = a.backbone.net.encoders[0].basic_module.conv1.weight.grad
    gb = b.backbone.net.encoders[0].basic_module.conv1.weight.grad
    assert torch.allclose(ga, gb, atol=1e-6)


@pytest.mark.parametrize(
    "f_maps,expected", [([32, 64, 128], 1_725_985), ([32, 64, 128, 256], 7_068_961), ([64, 128, 256, 512], 28_269_121)]
)
def test_seed_parameter_counts_from_config(f_maps, expected):
    cfg = DeflareConfig.model_validate({"model": {"f_maps": f_maps, "num_levels": len(f_maps)}})
    assert count_parameters(build_model(cfg.model)) == expected


def test_train_config_is_the_seed_7m_model():
    cfg = load_config(REPO / "configs" / "deflare" / "train.yaml")
    assert count_parameters(build_model(cfg.model)) == 7_068_961
    assert cfg.voxel.num_bins == 8 and cfg.voxel.segment_duration_us == 20_000


def test_config_rejects_level_mismatch_and_five_levels_with_8_bins(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("task: deflare\nmodel: {f_maps: [8, 16, 32], num_levels: 4}\n")
    with pytest.raises(ConfigError, match="num_levels"):
        load_config(p)
    p.write_text("task: deflare\nmodel: {f_maps: [4, 8, 16, 32, 64], num_levels: 5, num_groups: 4}\n")
    with pytest.raises(ConfigError, match="num_bins=8 must be divisible by 2\\*\\*\\(levels-1\\)=16"):
        load_config(p)


def test_losses():
    pred = torch.tensor([[1.0, 2.0]])
    batch = {"target": torch.tensor([[1.0, 0.0]])}
    mse = VoxelLoss("mse")(pred, batch)
    assert mse["loss"].item() == pytest.approx(2.0)
    l1c = VoxelLoss("l1_count", count_weight=1.0)(pred, batch)
    assert l1c["count"].item() == pytest.approx(2.0)  # |3 - 1| / 1
    assert l1c["loss"].item() == pytest.approx(1.0 + 2.0)
