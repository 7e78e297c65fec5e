"""SAGE losses against hand-computed values on small tensors, each built alone from the registry."""
import logging
import math

import pytest
import torch
from basicsr.losses import build_loss
from torch import nn

from fusion.losses.contrastive_loss import SAMContrastiveLoss, SAMFeatureEncoder
from fusion.losses.fusion_losses import sobel_gradient
from fusion.utils.sam_util import SAMCheckpointError, build_tiny_sam


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def _delta(value: float = 1.0, size: int = 3) -> torch.Tensor:
    x = torch.zeros(1, 1, size, size)
    x[0, 0, size // 2, size // 2] = value
    return x


# ---------------------------------------------------------------------------------------------- Sobel / context
def test_sobel_gradient_of_a_delta():
    # |Gx| + |Gy| of a centred delta: the kernels' absolute values, summed; 0 at the centre
    expected = torch.tensor([[2., 2., 2.], [2., 0., 2.], [2., 2., 2.]])
    assert torch.equal(sobel_gradient(_delta())[0, 0], expected)


def test_context_loss_official_weights_by_hand():
    loss = build_loss({'type': 'SAGEContextLoss'})  # official student weights
    zero = torch.zeros(1, 1, 3, 3)
    out = _delta().requires_grad_()
    # MSE(o, 0) = 1/9 for each of the three targets; L1(g(o), 0) = 16/9 for both gradient terms
    # 3 x (3 + 2 + 4)/9 + 3 x (9 + 3) x 16/9 = 3 + 64
    value = loss(out, zero, zero, zero)
    assert value.item() == pytest.approx(67.0, rel=1e-6)
    value.backward()
    assert out.grad.abs().sum() > 0
    parts = loss.components(out, zero, zero, zero)
    assert parts['int_vis'].item() == pytest.approx(1.0)
    assert parts['int_ref'].item() == pytest.approx(4 / 3)
    assert parts['grad_src'].item() == pytest.approx(48.0)
    assert parts['grad_ref'].item() == pytest.approx(16.0)


def test_context_loss_uses_elementwise_max_of_source_gradients():
    loss = build_loss({'type': 'SAGEContextLoss', 'intensity_weight': 0, 'gradient_weight': 1,
                       'w_grad_src': 1, 'w_grad_ref': 0})
    out = torch.zeros(1, 1, 3, 3)
    vis, ir = _delta(1.0), _delta(2.0)
    # max(g(vis), g(ir)) = g(ir) = 4 on the 8 border pixels -> L1 = 32/9 (a mean would give 24/9)
    assert loss(out, vis, ir).item() == pytest.approx(32 / 9)
    # without a reference the reference terms vanish
    full = build_loss({'type': 'SAGEContextLoss'})
    assert full.components(out, vis, ir)['int_ref'].item() == 0
    # the teacher's own loss (section 4.2): MSE(T,y) + MSE(T,ir) + 2 Grad(T; y, ir)
    teacher = build_loss({'type': 'SAGEContextLoss', 'intensity_weight': 1, 'gradient_weight': 1, 'w_int_vis': 1,
                          'w_int_ir': 1, 'w_int_ref': 0, 'w_grad_src': 2, 'w_grad_ref': 0})
    assert teacher(out, vis, ir).item() == pytest.approx(1 / 9 + 4 / 9 + 2 * 32 / 9)


def test_context_loss_rejects_bad_shapes():
    loss = build_loss({'type': 'SAGEContextLoss'})
    with pytest.raises(ValueError, match='B x 1 x H x W'):
        loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match='shape'):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), torch.zeros(1, 1, 4, 4))


# ---------------------------------------------------------------------------------------------- feature alignment
def test_feature_alignment_by_hand():
    loss = build_loss({'type': 'FeatureAlignmentLoss', 'loss_weight': 0.3})
    a = torch.tensor([[1., 0.], [1., 1.]]).view(2, 2, 1, 1)
    b = torch.tensor([[1., 0.], [1., 0.]]).view(2, 2, 1, 1)
    # per sample cos: 1 and 1/sqrt(2) -> level value 1 - (1 + 0.7071)/2
    level = 1 - (1 + 1 / math.sqrt(2)) / 2
    assert loss([a], [b]).item() == pytest.approx(0.3 * level, rel=1e-6)
    # identical features give 0, negated ones 2 per level (5 levels -> 10, as the official range)
    feats = [torch.randn(2, 4, 3, 3) for _ in range(5)]
    plain = build_loss({'type': 'FeatureAlignmentLoss'})
    assert plain(feats, feats).item() == pytest.approx(0.0, abs=1e-6)
    assert plain(feats, [-f for f in feats]).item() == pytest.approx(10.0, rel=1e-6)
    with pytest.raises(ValueError, match='level 1 shapes differ'):
        plain([a], [torch.zeros(2, 3, 1, 1)])


# ---------------------------------------------------------------------------------------------- segmentation CE
def test_seg_cross_entropy_by_hand_with_ignore_index():
    loss = build_loss({'type': 'SegCrossEntropyLoss', 'loss_weight': 0.3, 'ignore_index': 255})
    logits = torch.tensor([[[[math.log(3.0), 0.0, 5.0]], [[0.0, 0.0, -5.0]]]], requires_grad=True)  # 1 x 2 x 1 x 3
    label = torch.tensor([[[0, 1, 255]]])
    # pixel 1: -log(3/4); pixel 2: -log(1/2); pixel 3 ignored
    expected = 0.3 * (-math.log(0.75) - math.log(0.5)) / 2
    value = loss(logits, label)
    assert value.item() == pytest.approx(expected, rel=1e-6)
    value.backward()
    assert torch.all(logits.grad[..., 2] == 0)  # the ignored pixel gets no gradient
    # nothing labelled: 0, not NaN, and backward still works
    empty = loss(logits, torch.full((1, 1, 3), 255))
    assert empty.item() == 0.0
    empty.backward()


def test_seg_cross_entropy_rejects_scaled_or_out_of_range_labels():
    loss = build_loss({'type': 'SegCrossEntropyLoss'})
    logits = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError, match='integer class ids'):
        loss(logits, torch.full((1, 2, 2), 2 / 255))  # the official /255 labels
    with pytest.raises(ValueError, match=r'class ids must be in \[0, 2\]'):
        loss(logits, torch.full((1, 2, 2), 5))
    # logits of another size are resized to the label size
    assert loss(torch.zeros(1, 3, 1, 1), torch.zeros(1, 4, 4, dtype=torch.long)).item() == pytest.approx(math.log(3))


# ---------------------------------------------------------------------------------------------- contrastive
class _Identity(nn.Module):
    """Feature extractor returning the image itself: D becomes the instance-normalised L2."""

    def forward(self, x):
        return [x]


def _images(values):
    return torch.tensor(values, dtype=torch.float32).view(len(values), 1, 1, -1)


def test_contrastive_loss_by_hand():
    loss = SAMContrastiveLoss(loss_weight=1.0, encoder=_Identity())
    out = _images([[0, 0, 1, 1]])
    ref = _images([[1, 1, 0, 0]])
    vis = _images([[0, 1, 0, 1]])
    ir = _images([[1, 0, 0, 1]])
    masks = torch.ones(1, 1, 1, 4)
    # IN(out) = c[-1,-1,1,1], IN(ref) = -IN(out): D_pos = 4c; IN(vis) = c[-1,1,-1,1]: D_neg = 2 sqrt(2) c
    # per modality sqrt(2); IN(ir) = c[1,-1,-1,1]: also 2 sqrt(2) c -> total 2 sqrt(2)
    parts = loss.components(out, ref, vis, ir, masks, masks)
    assert parts['vis'].item() == pytest.approx(math.sqrt(2), rel=1e-4)
    assert parts['ir'].item() == pytest.approx(math.sqrt(2), rel=1e-4)
    # anchor equal to the positive: 0
    assert loss(ref, ref, vis, ir, masks, masks).item() == pytest.approx(0.0, abs=1e-6)


def test_contrastive_loss_per_sample_vs_official_batch_norm():
    out = _images([[0, 0, 1, 1], [0, 0, 1, 1]])
    ref = _images([[1, 1, 0, 0], [0, 1, 1, 1]])
    neg = _images([[0, 1, 0, 1], [0, 1, 0, 1]])
    masks = torch.ones(2, 1, 1, 4)
    fixed = SAMContrastiveLoss(loss_weight=1.0, encoder=_Identity())
    official = SAMContrastiveLoss(loss_weight=1.0, encoder=_Identity(), faithful=True)

    def in_norm(v):
        v = torch.tensor(v, dtype=torch.float64)
        return (v - v.mean()) / torch.sqrt(v.var(unbiased=False) + 1e-5)

    a, n = in_norm([0, 0, 1, 1]), in_norm([0, 1, 0, 1])
    pos = [torch.linalg.norm(in_norm([1, 1, 0, 0]) - a), torch.linalg.norm(in_norm([0, 1, 1, 1]) - a)]
    neg_d = torch.linalg.norm(n - a)
    per_sample = sum(p / neg_d for p in pos) / 2  # mean of per-sample ratios
    batch = torch.sqrt(pos[0] ** 2 + pos[1] ** 2) / torch.sqrt(2 * neg_d ** 2)  # one norm over the batch
    value = fixed.components(out, ref, neg, neg, masks, masks)['vis'].item()
    assert value == pytest.approx(float(per_sample), rel=1e-4)
    assert official.components(out, ref, neg, neg, masks, masks)['vis'].item() == pytest.approx(float(batch), rel=1e-4)


def test_contrastive_loss_skips_empty_patches_per_sample():
    loss = SAMContrastiveLoss(loss_weight=1.0, encoder=_Identity())
    out = _images([[0, 0, 1, 1], [0, 0, 1, 1]])
    ref = _images([[1, 1, 0, 0], [1, 1, 0, 0]])
    neg = _images([[0, 1, 0, 1], [0, 1, 0, 1]])
    masks = torch.ones(2, 1, 1, 4)
    masks[1] = 0  # the second sample has no such patch
    # only the first sample counts: sqrt(2), not (sqrt(2) + 0) / 2
    assert loss.components(out, ref, neg, neg, masks, masks)['vis'].item() == pytest.approx(math.sqrt(2), rel=1e-4)
    # binarised masks: masked-intensity patches weigh every covered pixel equally
    bright = masks * torch.tensor([0.2, 0.9, 0.5, 1.0]).view(1, 1, 1, 4)
    assert loss.components(out, ref, neg, neg, bright, bright)['vis'].item() == pytest.approx(math.sqrt(2), rel=1e-4)


TINY = {'embed_dim': 32, 'num_heads': 2, 'use_rel_pos': False, 'window_size': 0, 'global_attn_indexes': ()}


def test_sam_encoder_is_frozen_and_passes_gradients_to_the_image():
    loss = SAMContrastiveLoss(encoder_overrides=TINY, depth=1)
    out = torch.rand(2, 1, 32, 48, requires_grad=True)
    ref, vis, ir = torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48), torch.rand(2, 1, 32, 48)
    masks = (torch.rand(2, 3, 32, 48) > 0.3).float()
    value = loss(out, ref, vis, ir, masks, masks)
    value.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    params = list(loss.encoder.parameters())
    assert params and all(not p.requires_grad and p.grad is None for p in params)
    loss.train()
    assert not loss.encoder.training


def test_sam_encoder_strict_load_from_a_standard_checkpoint(tmp_path):
    sam = build_tiny_sam(embed_dim=32, depth=1, num_heads=2, seed=3)
    path = tmp_path / 'sam_tiny.pth'
    torch.save(sam.state_dict(), path)  # a standard SAM state dict: image_encoder.*, prompt_encoder.*, ...
    enc = SAMFeatureEncoder('vit_b', depth=1, checkpoint=str(path), encoder_overrides=TINY)
    assert torch.equal(enc.blocks[0].attn.qkv.weight, sam.image_encoder.blocks[0].attn.qkv.weight)
    assert torch.equal(enc.patch_embed.proj.weight, sam.image_encoder.patch_embed.proj.weight)
    # an encoder-only dict (the official SAGE format) loads too
    enc_only = tmp_path / 'encoder_only.pth'
    torch.save(sam.image_encoder.state_dict(), enc_only)
    SAMFeatureEncoder('vit_b', depth=1, checkpoint=str(enc_only), encoder_overrides=TINY)
    # more blocks than the checkpoint has / a wrong architecture / a missing tensor: errors
    with pytest.raises(SAMCheckpointError, match='missing keys'):
        SAMFeatureEncoder('vit_b', depth=2, checkpoint=str(path), encoder_overrides=TINY)
    with pytest.raises(SAMCheckpointError, match='shape mismatches'):
        SAMFeatureEncoder('vit_b', depth=1, checkpoint=str(path), encoder_overrides=dict(TINY, embed_dim=16))
    state = sam.state_dict()
    del state['image_encoder.blocks.0.mlp.lin1.weight']
    torch.save(state, tmp_path / 'broken.pth')
    with pytest.raises(SAMCheckpointError, match='mlp.lin1.weight'):
        SAMFeatureEncoder('vit_b', depth=1, checkpoint=str(tmp_path / 'broken.pth'), encoder_overrides=TINY)
    with pytest.raises(SAMCheckpointError, match='not found'):
        SAMContrastiveLoss(checkpoint=str(tmp_path / 'nowhere.pth'))


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_contrastive_fallbacks_are_logged_never_silent():
    handler = _Records()
    logger = logging.getLogger('basicsr')
    logger.addHandler(handler)
    try:
        random_loss = build_loss({'type': 'SAMContrastiveLoss', 'encoder_overrides': TINY, 'depth': 1})
        gradient_loss = build_loss({'type': 'SAMContrastiveLoss', 'fallback': 'gradient'})
    finally:
        logger.removeHandler(handler)
    assert random_loss.encoder_kind == 'random_vit_b' and gradient_loss.encoder_kind == 'gradient'
    assert any('NO SAM CHECKPOINT' in m and '"random"' in m for m in handler.messages)
    assert any('NO SAM CHECKPOINT' in m and '"gradient"' in m for m in handler.messages)
    # the random fallback is reproducible (fixed seed) and leaves the global RNG alone
    state = torch.get_rng_state()
    again = build_loss({'type': 'SAMContrastiveLoss', 'encoder_overrides': TINY, 'depth': 1})
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(again.encoder.blocks[0].mlp.lin1.weight, random_loss.encoder.blocks[0].mlp.lin1.weight)
    with pytest.raises(SAMCheckpointError, match='fallback is "error"'):
        build_loss({'type': 'SAMContrastiveLoss', 'fallback': 'error'})


def test_sam_position_embedding_follows_sam_geometry():
    enc = SAMFeatureEncoder('vit_b', depth=1, encoder_overrides=TINY)
    with torch.no_grad():
        enc.pos_embed.copy_(torch.arange(64.).view(1, 64, 1, 1).expand(1, 64, 64, 32))  # row index
    like = torch.zeros(1)
    # a 1024-px long side is SAM's own scale: the grid is used as is
    assert torch.equal(enc._pos_for_grid(64, 64, 1024, like), enc.pos_embed)
    # a 512-px image has 32 tokens per side, the grid is halved: row i sits at 2i + 0.5
    half = enc._pos_for_grid(32, 20, 512, like)
    assert half.shape == (1, 32, 20, 32)
    assert half[0, 1:-1, 0, 0].tolist() == pytest.approx([2 * i + 0.5 for i in range(1, 31)], abs=1e-4)
    # a 256 x 160 image: 16 x 10 tokens, the top-left of a 16 x 16 grid (as SAM pads at the bottom right)
    small = enc._pos_for_grid(16, 10, 256, like)
    assert small.shape == (1, 16, 10, 32)
