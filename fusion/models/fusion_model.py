"""FusionModel: runs a trained fusion network (the SAGE student by default) on test or
validation data; the base of SAGEModel's evaluation."""
from __future__ import annotations

import torch
from basicsr.utils.registry import MODEL_REGISTRY

from fusion.models.fusion_base_model import FusionBaseModel
from fusion.utils.option_schema import Component, Required


@MODEL_REGISTRY.register()
class FusionModel(FusionBaseModel):
    """Inference-only model: ``network_g`` + ``path.pretrain_network_g``.

    ``val.fast_inference`` (default true) runs the student through the BN-folded, batched
    inference path; false runs the plain eval-mode network as the official code does.
    """

    OPTIONS = {'network_g': Required(Component('arch')), 'path': {'pretrain_network_g': 'str'}}

    def __init__(self, opt: dict) -> None:
        super().__init__(opt)
        self.net_g = self.build_net('g')
        self.net_g.eval()

    def feed_data(self, data: dict) -> None:
        self.vis_y = data['vis_y'].to(self.device)
        self.ir = data['ir'].to(self.device)

    def test(self) -> None:
        self.output = self.fuse(self.vis_y, self.ir)

    def fuse(self, vis_y: torch.Tensor, ir: torch.Tensor) -> torch.Tensor:
        """Fused Y of the deployed network for a batch (B x 1 x H x W in [0, 1])."""
        return self.student_inference(self.net_g, vis_y.to(self.device), ir.to(self.device))

    def fuse_batch(self, data: dict) -> torch.Tensor:
        return self.fuse(data['vis_y'], data['ir'])

    def optimize_parameters(self, current_iter: int) -> None:
        raise RuntimeError('FusionModel only runs inference; train with a training model such as SAGEModel')

    def save(self, epoch: int, current_iter: int) -> None:
        self.save_network(self.net_g, 'net_g', current_iter)
