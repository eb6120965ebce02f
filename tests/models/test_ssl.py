"""The self-supervised objectives: DINO's loss, teacher and centre; views keep the ADC value."""

import pytest
import torch

from fedprostate.models.backbones import create_backbone
from fedprostate.models.foundation import backbone_sha256
from fedprostate.models.pretrain import pretrain
from fedprostate.models.ssl import DINO, augment, dino_loss, make_task


def smooth_crops(n=16, crop=32, seed=0):
    noise = torch.randn(n, 3, crop, crop, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)


def test_augment_never_changes_the_adc_channel_by_default_and_does_on_t2():
    x = torch.full((64, 3, 32, 32), 0.5)
    out = augment(x, torch.Generator().manual_seed(0))
    adc_means = out[:, 1].mean(dim=(1, 2))
    t2_means = out[:, 0].mean(dim=(1, 2))
    assert torch.allclose(adc_means, torch.full_like(adc_means, 0.5), atol=0.02)  # noise only
    assert t2_means.std() > 0.03  # T2 gain/offset jitter between views
    jittered = augment(x, torch.Generator().manual_seed(0), adc_jitter=0.2)[:, 1].mean(dim=(1, 2))
    assert jittered.std() > 0.03


def test_dino_loss_is_lowest_when_the_student_matches_the_sharpened_teacher():
    teacher = [torch.tensor([[4.0, 0.0, 0.0]]), torch.tensor([[0.0, 4.0, 0.0]])]
    centre = torch.zeros(1, 3)
    agree = [teacher[1] * 10, teacher[0] * 10]  # each student view matches the *other* teacher view
    disagree = [teacher[0] * 10, teacher[1] * 10]
    low = dino_loss(agree, teacher, centre, 0.04, 0.1)
    high = dino_loss(disagree, teacher, centre, 0.04, 0.1)
    assert low < 0.01 < high


def test_dino_teacher_is_a_moving_average_and_is_what_is_kept():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        task = make_task("dino", create_backbone("swin_test", crop=32), "swin_test", 32)
    assert isinstance(task, DINO) and task.encoder() is task.teacher_backbone
    assert not any(p.requires_grad for p in task.teacher_backbone.parameters())
    start = backbone_sha256(task.teacher_backbone)
    with torch.no_grad():
        for p in task.backbone.parameters():
            p.add_(1.0)
    task.after_step(0.0)  # momentum 0.996: the teacher moves 0.4 % of the way
    w_student = next(task.backbone.parameters())
    w_teacher = next(task.teacher_backbone.parameters())
    assert backbone_sha256(task.teacher_backbone) != start
    assert torch.allclose(w_student - w_teacher, torch.full_like(w_student, 0.996), atol=1e-4)
    task.after_step(1.0)  # momentum 1 at the end of training: the teacher stays
    assert torch.equal(next(task.teacher_backbone.parameters()), w_teacher)


@pytest.mark.parametrize("arch", ["swin_test", "resnet_test"])
def test_dino_pretrains_any_family_and_changes_the_teacher(arch):
    crops = smooth_crops(n=16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        start = backbone_sha256(create_backbone(arch, crop=32))
    model, history = pretrain(arch, crops, method="dino", epochs=2, batch_size=8, progress=False)
    assert len(history) == 2 and all(torch.isfinite(torch.tensor(history)))
    assert backbone_sha256(model) != start


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="byol.*simmim, simclr, dino"):
        make_task("byol", create_backbone("swin_test", crop=32), "swin_test", 32)
