"""Training details found in review (issue 11), each shown on tiny data: crops of small images,
the true binary masks in the contrastive loss, skipped non-finite steps still advance the LR
schedule, the segmenter sees a clamped image, class weights of the segmentation loss, and the
patch modes of dataset and teacher agree."""
import cv2
import numpy as np
import pytest
import torch
from basicsr.models import build_model
from test_sage_model import batch, make_opt

from fusion.data.sage_fusion_dataset import SAGEFusionDataset
from fusion.losses.fusion_losses import SegCrossEntropyLoss


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _folder_pair(tmp_path, ir: np.ndarray, vis: np.ndarray) -> dict:
    for name, img in (('ir', ir), ('vi', vis)):
        (tmp_path / name).mkdir()
        cv2.imwrite(str(tmp_path / name / 'p.png'), img)
    return {'name': 't', 'type': 'SAGEFusionDataset', 'phase': 'train', 'dataroot_ir': str(tmp_path / 'ir'),
            'dataroot_vis': str(tmp_path / 'vi'), 'patch_source': {'type': 'random_crop', 'num_masks': 2},
            'mask_num': 2, 'use_hflip': False}


def test_small_images_are_cropped_on_long_sides_then_resized(tmp_path):
    # 20 x 40 image, crop 32 x 32: the width is long enough, so a 32-wide window is cut (columns
    # keep consecutive values); only the too-short height is stretched. Squashing the whole image
    # (the old behaviour) would resample the columns.
    cols = (np.arange(40, dtype=np.uint8) * 5)[None].repeat(20, 0)
    ds = SAGEFusionDataset({**_folder_pair(tmp_path, cols, cv2.cvtColor(cols, cv2.COLOR_GRAY2BGR)),
                            'gt_size': [32, 32]})
    lefts = set()
    for seed in range(6):
        ds.set_sample_seed(seed)
        ir = ds[0]['ir'][0].numpy()
        assert ir.shape == (32, 32)
        row = np.round(ir[0] * 255).astype(int)
        left = row[0] // 5
        np.testing.assert_array_equal(row, (left + np.arange(32)) * 5)
        assert (ir == ir[:1]).all()  # the stretched height repeats the constant rows
        lefts.add(left)
    assert len(lefts) > 1 and max(lefts) <= 8  # random windows inside the 40 columns


def test_contrastive_loss_gets_the_true_binary_masks(tmp_path):
    ir = np.zeros((32, 32), np.uint8)
    ir[:, 16:] = 200  # the left half is black: masked intensities are 0 there
    vis = np.full((32, 32, 3), 120, np.uint8)
    ds = SAGEFusionDataset({**_folder_pair(tmp_path, ir, vis), 'gt_size': [32, 32]})
    sample = ds[0]
    masks, patches = sample['ir_masks'], sample['ir_patches']
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert ((patches > 0) <= (masks > 0)).all()
    assert (masks > 0).sum() > (patches > 0).sum()  # pixels of value 0 inside a mask stay in it

    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=0, seg=False))
    data = batch()
    data['vis_masks'] = torch.ones_like(data['vis_patches'])
    data['ir_masks'] = torch.ones_like(data['ir_patches'])
    seen = {}
    original = model.cri_contrastive.components

    def spy(output, ref, vis_y, ir_, vis_masks, ir_masks):
        seen['masks'] = (vis_masks, ir_masks)
        return original(output, ref, vis_y, ir_, vis_masks, ir_masks)

    model.cri_contrastive.components = spy
    model.feed_data(data)
    model.optimize_parameters(1)  # a student step
    assert torch.equal(seen['masks'][0], data['vis_masks']) and torch.equal(seen['masks'][1], data['ir_masks'])
    model.cri_contrastive.binarize_masks = False  # faithful: the official masked-intensity weights
    model.optimize_parameters(3)
    assert torch.equal(seen['masks'][0], data['vis_patches']) and torch.equal(seen['masks'][1], data['ir_patches'])


def test_skipped_nonfinite_steps_still_advance_the_schedules(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=6, pretrain=2, seg=False, nonfinite_loss='skip'))
    for cri in (model.cri_teacher, model.cri_context):
        cri.components = lambda fused, *args, **kwargs: {'int_vis': fused.sum() * float('nan')}
    before = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    for it in range(1, 7):
        model.feed_data(batch(seed=it))
        model.optimize_parameters(it)
    assert all(torch.equal(before[k], v) for k, v in model.net_g.state_dict().items() if 'running' not in k
               and 'num_batches' not in k)
    assert model.steps == {'t': 4, 'g': 2, 'seg': 0}
    assert [o.param_groups[0]['lr'] for o in model.optimizers] == pytest.approx([1e-5, 1e-5])


def test_segmenter_sees_a_clamped_image_and_class_weights_apply(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=4))
    model.feed_data(batch())
    seen = {}
    model.get_bare_model(model.net_seg).register_forward_pre_hook(lambda m, args: seen.update(x=args[0]))
    fused = torch.linspace(-0.5, 1.5, 2 * 32 * 32).reshape(2, 1, 32, 32).requires_grad_()
    model._seg_logits(fused).sum().backward()
    assert seen['x'].min() >= 0 and seen['x'].max() <= 1
    assert fused.grad.abs().sum() > 0  # the teacher still gets a gradient inside the range

    logits = torch.randn(2, 3, 8, 8)
    label = torch.randint(0, 3, (2, 8, 8))
    plain = SegCrossEntropyLoss()(logits, label)
    weighted = SegCrossEntropyLoss(class_weights=[1.0, 0.0, 0.0])(logits, label)
    pixels = logits.permute(0, 2, 3, 1).reshape(-1, 3)[label.flatten() == 0]  # weight 1 for class 0 only
    only0 = torch.nn.functional.cross_entropy(pixels, torch.zeros(len(pixels), dtype=torch.long))
    assert not torch.isclose(plain, weighted)
    assert torch.isclose(weighted, only0, atol=1e-5)


def test_dataset_and_teacher_patch_modes_must_agree(tmp_path):
    opt = make_opt(tmp_path, seg=False)
    opt['datasets'] = {'train': {'name': 't', 'type': 'SAGEFusionDataset', 'patch_mode': 'binary'}}
    with pytest.raises(ValueError, match='patch_mode .*binary.* and network_t.patch_mode .*masked_intensity.* agree'):
        build_model(opt)
