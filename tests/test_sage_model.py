"""SAGEModel on CPU with tiny networks: one step of each stage, the segmentation gradient, the
schedules, the ablations, validation, and a short overfit run on one real pair."""
import os.path as osp

import pytest
import torch
from basicsr.data import build_dataloader, build_dataset
from basicsr.models import build_model
from conftest import ROOT

from fusion.models.lr_scheduler import CosineToMinLR


DATA = osp.join(ROOT, 'tests', 'data', 'sage_training')

TINY_TEACHER = {'type': 'SAGETeacher', 'mask_num': 2, 'channels': 8, 'heads': 1, 'head_dim': 8, 'feature_channels': 8}
TINY_STUDENT = {'type': 'SAGEStudent', 'dim': 8}
TINY_SEG = {'type': 'FusionSegNet', 'in_ch': 3, 'num_classes': 9, 'base_ch': 4, 'levels': 2}
TINY_SAM = {'embed_dim': 16, 'num_heads': 1, 'use_rel_pos': False, 'window_size': 0, 'global_attn_indexes': []}


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def make_opt(tmp_path, total_iter=6, pretrain=2, seg=True, **train_overrides) -> dict:
    opt = {
        'name': 'unit', 'model_type': 'SAGEModel', 'num_gpu': 0, 'is_train': True, 'dist': False, 'rank': 0,
        'world_size': 1, 'manual_seed': 0, 'root_path': str(tmp_path),
        'network_t': dict(TINY_TEACHER), 'network_g': dict(TINY_STUDENT),
        'path': {'models': str(tmp_path / 'models'), 'training_states': str(tmp_path / 'states'),
                 'visualization': str(tmp_path / 'vis')},
        'train': {
            'total_iter': total_iter, 'teacher_pretrain_iter': pretrain,
            'optim_t': {'type': 'Adam', 'lr': 5e-4}, 'optim_g': {'type': 'Adam', 'lr': 2e-3},
            'optim_seg': {'type': 'Adam', 'lr': 1e-3},
            'scheduler': {'type': 'CosineAnnealingLR', 'eta_min': 1e-5},
            'teacher_fusion_opt': {'type': 'SAGEContextLoss', 'intensity_weight': 1, 'gradient_weight': 1,
                                   'w_int_vis': 1, 'w_int_ir': 1, 'w_int_ref': 0, 'w_grad_src': 2, 'w_grad_ref': 0},
            'context_opt': {'type': 'SAGEContextLoss'},
            'contrastive_opt': {'type': 'SAMContrastiveLoss', 'depth': 1, 'encoder_overrides': dict(TINY_SAM)},
            'feature_opt': {'type': 'FeatureAlignmentLoss', 'loss_weight': 0.3},
            'feedback_feature_opt': {'type': 'FeatureAlignmentLoss', 'loss_weight': 0.01},
            'seg_opt': {'type': 'SegCrossEntropyLoss', 'loss_weight': 0.3, 'ignore_index': 255},
        },
        'val': {'save_img': True, 'pbar': False, 'metrics': {'en': {'type': 'calculate_en'}}},
    }
    if seg:
        opt['network_seg'] = dict(TINY_SEG)
    opt['train'].update(train_overrides)
    return opt


def batch(seed=0, b=2, h=32, w=32, mask_num=2) -> dict:
    g = torch.Generator().manual_seed(seed)
    vis, ir = torch.rand(b, 1, h, w, generator=g), torch.rand(b, 1, h, w, generator=g)
    masks = (torch.rand(b, mask_num, h, w, generator=g) > 0.5).float()
    return {'vis_y': vis, 'ir': ir, 'vis_cr': torch.rand(b, 1, h, w, generator=g),
            'vis_cb': torch.rand(b, 1, h, w, generator=g), 'label': torch.randint(0, 9, (b, h, w), generator=g),
            'vis_patches': masks * vis, 'ir_patches': masks.flip(1) * ir}


def params(net) -> dict:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def changed(before: dict, net, buffers=False) -> bool:
    after = net.state_dict()
    keys = [k for k in before if buffers or ('running' not in k and 'num_batches' not in k)]
    return any(not torch.equal(before[k], after[k]) for k in keys)


# ---------------------------------------------------------------------------------------------- stages
def test_one_step_of_each_stage_updates_the_right_networks(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=4, pretrain=1, ema_decay=0.5))
    kinds = [model.step_kind(i) for i in range(1, 5)]
    assert kinds == ['pretrain', 'student', 'teacher', 'student']
    model.feed_data(batch())

    t0, g0, s0, e0 = params(model.net_t), params(model.net_g), params(model.net_seg), params(model.net_g_ema)
    model.optimize_parameters(1)  # stage 1: teacher + segmentation net only
    assert changed(t0, model.net_t) and changed(s0, model.net_seg)
    assert not changed(g0, model.net_g, buffers=True)
    log = model.get_current_log()
    assert log['l_t_seg'] > 0 and log['l_t_total'] > 0 and log['l_t_fb_feature'] == 0
    assert model.steps == {'t': 1, 'g': 0, 'seg': 1}

    t1, g1 = params(model.net_t), params(model.net_g)
    model.optimize_parameters(2)  # student step: student (+ EMA) only
    assert changed(g1, model.net_g) and changed(e0, model.net_g_ema)
    assert not changed(t1, model.net_t, buffers=True)
    log = model.get_current_log()
    for key in ('l_g_int_vis', 'l_g_int_ref', 'l_g_grad_src', 'l_g_grad_ref', 'l_g_cs_vis', 'l_g_cs_ir', 'l_g_feature'):
        assert log[key] > 0, key
    # the EMA student's BN statistics follow the student's (basicsr's EMA would leave them at init)
    assert torch.equal(model.net_g_ema.module1[1].running_mean, model.net_g.module1[1].running_mean)

    t2, g2 = params(model.net_t), params(model.net_g)
    model.optimize_parameters(3)  # teacher step with the student's feedback
    assert changed(t2, model.net_t)
    assert not changed(g2, model.net_g, buffers=True)  # eval-mode feedback: BN statistics untouched too
    log = model.get_current_log()
    for key in ('l_t_fb_int_ref', 'l_t_fb_grad_ref', 'l_t_fb_cs_vis', 'l_t_fb_feature', 'l_t_seg'):
        assert log[key] > 0, key
    assert log['l_g_total'] > 0  # the student's last values are carried, not zeros
    assert model.steps == {'t': 2, 'g': 1, 'seg': 2}
    visuals = model.get_current_visuals()
    assert list(visuals) == ['ir', 'vis', 'teacher', 'student'] and visuals['teacher'].shape == (2, 1, 32, 32)


@pytest.mark.parametrize('mode,moves', [('eval', False), ('batch_stats', False), ('train', True)])
def test_feedback_student_mode_and_bn_statistics(tmp_path, mode, moves):
    model = build_model(make_opt(tmp_path, total_iter=2, pretrain=0, seg=False, feedback_student_mode=mode,
                                 distill_pattern=['teacher']))
    model.feed_data(batch())
    before = params(model.net_g)
    model.optimize_parameters(1)
    assert model.last_step_kind == 'teacher'
    assert changed(before, model.net_g, buffers=True) is moves
    assert model.net_g.training


def test_segmentation_gradient_reaches_the_teacher(tmp_path):
    opt = make_opt(tmp_path, total_iter=1, pretrain=1)
    opt['train']['teacher_fusion_opt']['loss_weight'] = 0  # only the segmentation loss is left
    model = build_model(opt)
    model.feed_data(batch())
    fused, _ = model.net_t(model.vis_y, model.ir, model.vis_patches, model.ir_patches)
    model.cri_seg(model._seg_logits(fused), model.label).backward()
    teacher_grads = [p.grad for p in model.net_t.parameters() if p.grad is not None]
    assert teacher_grads and sum(g.abs().sum() for g in teacher_grads) > 0
    assert model.net_t.img_decoder2[-2].weight.grad.abs().sum() > 0  # the output conv
    model.net_t.zero_grad(set_to_none=True)
    before = params(model.net_t)
    model.optimize_parameters(1)
    assert model.get_current_log()['l_t_seg'] > 0 and model.get_current_log()['l_t_int_vis'] == 0
    assert changed(before, model.net_t)


def test_pretrained_segmentation_net_is_frozen_but_passes_gradient(tmp_path):
    seg_path = tmp_path / 'seg.pth'
    from basicsr.archs import build_network
    torch.save({'params': build_network(dict(TINY_SEG)).state_dict()}, seg_path)
    opt = make_opt(tmp_path, total_iter=1, pretrain=1)
    opt['path']['pretrain_network_seg'] = str(seg_path)
    model = build_model(opt)
    assert not model.seg_trainable and model.count_steps()['seg'] == 0
    assert all(not p.requires_grad for p in model.net_seg.parameters())
    model.feed_data(batch())
    t0, s0 = params(model.net_t), params(model.net_seg)
    model.optimize_parameters(1)
    assert changed(t0, model.net_t)
    assert not changed(s0, model.net_seg, buffers=True)  # frozen and in eval mode
    assert model.steps['seg'] == 0


# ---------------------------------------------------------------------------------------------- schedules
def test_lr_schedules_count_each_networks_own_steps(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=10, pretrain=4))
    assert model.count_steps() == {'t': 7, 'g': 3, 'seg': 7}
    assert [s.T_max for s in model.schedulers] == [7, 3, 7]
    offline = build_model(make_opt(tmp_path, total_iter=10, pretrain=4, offline_distillation=True))
    assert [offline.step_kind(i) for i in range(4, 8)] == ['pretrain', 'student', 'student', 'student']
    assert offline.count_steps() == {'t': 4, 'g': 6, 'seg': 4}
    pattern = build_model(make_opt(tmp_path, total_iter=6, pretrain=0, seg=False,
                                   distill_pattern=['student', 'student', 'teacher']))
    assert [pattern.step_kind(i) for i in range(1, 7)] == ['student', 'student', 'teacher'] * 2
    # cosine from the initial LR to eta_min in exactly T_max steps (the official one stopped halfway)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=2e-3)
    sched = CosineToMinLR(opt, T_max=4, eta_min=1e-5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]['lr'])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2e-3) and lrs[2] == pytest.approx((2e-3 + 1e-5) / 2)
    assert opt.param_groups[0]['lr'] == pytest.approx(1e-5)


def test_ablation_switches(tmp_path):
    base = build_model(make_opt(tmp_path, seg=False))
    assert base.cri_feature is not None and base.cri_contrastive is not None
    assert base.cri_context.w_int['ref'] == 4 and base.cri_context.w_grad['ref'] == 3
    abl = build_model(make_opt(tmp_path, seg=False, distill_ablations=['no_feature', 'no_context', 'no_contrastive']))
    assert abl.cri_feature is None and abl.cri_feedback_feature is None and abl.cri_contrastive is None
    assert abl.cri_context.w_int['ref'] == 0 and abl.cri_context.w_grad['ref'] == 0
    assert abl.cri_context.w_int['vis'] == 3  # the student keeps its source terms
    abl.feed_data(batch())
    abl.optimize_parameters(3)  # a student step
    log = abl.get_current_log()
    assert log['l_g_feature'] == 0 and log['l_g_cs_vis'] == 0 and log['l_g_int_ref'] == 0 and log['l_g_int_vis'] > 0
    with pytest.raises(ValueError, match='distill_ablations'):
        build_model(make_opt(tmp_path, seg=False, distill_ablations=['no_teacher']))


def test_offline_distillation_never_updates_the_teacher_after_stage_1(tmp_path):
    model = build_model(make_opt(tmp_path, total_iter=3, pretrain=1, seg=False, offline_distillation=True))
    model.feed_data(batch())
    model.optimize_parameters(1)
    t1 = params(model.net_t)
    for it in (2, 3):
        model.optimize_parameters(it)
        assert model.last_step_kind == 'student'
    assert not changed(t1, model.net_t, buffers=True)


# ---------------------------------------------------------------------------------------------- validation
def _val_loader(dataset_type='FusionPairDataset'):
    opt = {'name': 'tiny_val', 'type': dataset_type, 'phase': 'val', 'dataroot_ir': osp.join(DATA, 'ir'),
           'dataroot_vis': osp.join(DATA, 'vi'), 'io_backend': {'type': 'disk'}}
    if dataset_type == 'SAGEFusionDataset':
        opt.update(patch_source={'type': 'label'}, dataroot_label=osp.join(DATA, 'label'), num_classes=9, mask_num=2)
    return build_dataloader(build_dataset(opt), opt, num_gpu=0, dist=False)


def test_validation_student_and_teacher(tmp_path):
    opt = make_opt(tmp_path, seg=False)
    opt['val']['validate_teacher'] = True
    model = build_model(opt)
    results = model.nondist_validation(_val_loader('SAGEFusionDataset'), 7, None, True)
    assert set(results) == {'en', 'teacher_en'} and all(v >= 0 for v in results.values())
    assert osp.isfile(tmp_path / 'vis' / 'tiny_val' / '00106D_7.png')
    assert osp.isfile(tmp_path / 'vis' / 'tiny_val_teacher' / '00106D_7.png')
    # a plain pair set (no patches) validates the student
    opt['val']['validate_teacher'] = False
    assert set(build_model(opt).nondist_validation(_val_loader(), 1, None, False)) == {'en'}


# ---------------------------------------------------------------------------------------------- overfit
def test_overfit_one_real_pair_lowers_the_student_loss(tmp_path):
    """A few student steps on one real MFNet crop, distilling from a briefly pre-trained teacher."""
    ds_opt = {'name': 'one', 'type': 'SAGEFusionDataset', 'phase': 'val', 'dataroot_ir': osp.join(DATA, 'ir'),
              'dataroot_vis': osp.join(DATA, 'vi'), 'dataroot_label': osp.join(DATA, 'label'), 'num_classes': 9,
              'patch_source': {'type': 'label'}, 'mask_num': 2, 'io_backend': {'type': 'disk'}}
    sample = build_dataset(ds_opt)[0]
    data = {k: v[None] for k, v in sample.items() if torch.is_tensor(v)}
    opt = make_opt(tmp_path, total_iter=32, pretrain=2, seg=False, offline_distillation=True)
    opt['network_g'] = {'type': 'SAGEStudent', 'dim': 16}
    opt['network_t']['feature_channels'] = 16
    model = build_model(opt)
    model.feed_data(data)
    losses = []
    for it in range(1, 33):
        model.optimize_parameters(it)
        if model.last_step_kind == 'student':
            losses.append(model.get_current_log()['l_g_total'])
    assert len(losses) == 30
    assert sum(losses[-3:]) / 3 < 0.6 * sum(losses[:3]) / 3, losses


# ---------------------------------------------------------------------------------------------- option files
# the ablation switches of docs/training.md (--force_yml), applied with basicsr's own value parsing
ABLATIONS = {
    'w/o feature alignment': ["train:distill_ablations=['no_feature']"],
    'w/o context': ["train:distill_ablations=['no_context']"],
    'w/o contrastive': ["train:distill_ablations=['no_contrastive']"],
    'offline distillation': ['train:offline_distillation=true'],
}


def _options(tmp_path, name: str, overrides=()) -> dict:
    import yaml
    from basicsr.utils.options import _postprocess_yml_value, ordered_yaml

    with open(osp.join(ROOT, 'options', name)) as f:
        opt = yaml.load(f, Loader=ordered_yaml()[0])
    for entry in overrides:  # what parse_options does with --force_yml
        keys, value = entry.split('=')
        node = opt
        *parents, leaf = keys.split(':')
        for key in parents:
            node = node[key]
        node[leaf] = _postprocess_yml_value(value)
    opt.update(is_train=True, dist=False, rank=0, world_size=1, num_gpu=0, root_path=ROOT)
    opt['path'].update(models=str(tmp_path / 'm'), training_states=str(tmp_path / 's'),
                       visualization=str(tmp_path / 'v'))
    return opt


@pytest.mark.parametrize('name', ['train_sage.yml', 'train_sage_quick_cpu.yml'])
def test_option_files_build_the_paper_recipe(tmp_path, name):
    opt = _options(tmp_path, name)
    for phase, ds in opt['datasets'].items():
        ds['phase'] = phase.split('_')[0]
        assert len(build_dataset(ds)) == 6
    model = build_model(opt)
    assert [o.param_groups[0]['initial_lr'] for o in model.optimizers][:2] == [5e-4, 2e-3]
    assert model.cri_contrastive.loss_weight == pytest.approx(1 / 3000, rel=1e-6)
    assert model.cri_feature.loss_weight == 0.3 and model.cri_feedback_feature.loss_weight == 0.01
    assert model.feedback_weight == 0.1 and model.cri_seg.loss_weight == 0.3
    assert all(s.eta_min == 1e-5 for s in model.schedulers)
    counts = model.count_steps()
    assert [s.T_max for s in model.schedulers] == [counts['t'], counts['g'], counts['seg']]
    if name == 'train_sage.yml':
        assert model.pretrain_iters == 3050 and model.total_iter == 33550
        assert counts == {'t': 3050 + 15250, 'g': 15250, 'seg': 3050 + 15250}
        # the teacher of the recipe is the paper's SAGETeacher at its official size
        assert type(model.get_bare_model(model.net_t)).__name__ == 'SAGETeacher'
        assert sum(p.numel() for p in model.net_t.parameters()) == 2_639_505


@pytest.mark.parametrize('ablation', list(ABLATIONS))
def test_readme_ablation_switches(tmp_path, ablation):
    model = build_model(_options(tmp_path, 'train_sage_quick_cpu.yml', ABLATIONS[ablation]))
    flags = (model.cri_feature is None, model.cri_context.w_int['ref'] == 0, model.cri_contrastive is None,
             model.offline)
    expected = {'w/o feature alignment': (True, False, False, False), 'w/o context': (False, True, False, False),
                'w/o contrastive': (False, False, True, False), 'offline distillation': (False, False, False, True)}
    assert flags == expected[ablation]
