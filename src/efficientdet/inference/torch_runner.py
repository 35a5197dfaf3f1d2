"""The PyTorch network stage of a :class:`~efficientdet.inference.detector.Detector`.

With ``optimize`` the network runs as a BatchNorm-folded, channels-last copy (:mod:`.fuse`), on the
CPU also with each activation fused into its convolution (:mod:`.mkldnn`): same outputs to ~1e-5,
about 2x faster on the CPU than the training module.
"""

from __future__ import annotations

import numpy as np
import torch

from ..model.efficientdet import EfficientDet, flatten_outputs


class TorchRunner:
    """``run(batch, canvas_hw)``: normalised batch -> flattened (B, N, C) logits and (B, N, 4) deltas
    (``outputs == "raw"``); a segmentation-only model (``outputs == "seg"``) gives its (B, K, S, S) logits."""

    outputs = "raw"

    def __init__(self, model: EfficientDet, device: torch.device, optimize: bool,
                 dtype: torch.dtype | None = None) -> None:
        if not model.config.detect:
            self.outputs = "seg"
            optimize = False  # the BatchNorm folding covers the detection network's layers, not the decoder's
        self.model = model.eval().to(device)
        self.device = device
        self.config = model.config
        self.labels = model.labels
        self.image_size = model.config.image_size
        self.mean, self.std = model.config.mean, model.config.std
        self.channels_last = bool(optimize)  # the preprocessed batch's layout
        self.network: torch.nn.Module = self.model
        if optimize:
            from .fuse import fuse_model

            self.network = fuse_model(self.model).to(device, memory_format=torch.channels_last)
            if device.type == "cpu":
                from .mkldnn import fuse_conv_activations, mkldnn_available

                if mkldnn_available():
                    fuse_conv_activations(self.network)
        # bf16 (precision.py): a bfloat16 copy of the network; the input is cast once, the outputs back to float32
        self.dtype = dtype
        if dtype is not None and dtype != torch.float32:
            import copy

            source = self.network
            self.network = (copy.deepcopy(source) if source is self.model else source).to(dtype)

    def to_tensor(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """The preprocessed numpy batch as the (B, 3, S, S) tensor the network takes, on its device."""
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        if x.shape[-1] == 3 and x.shape[1] != 3:  # (B, S, S, 3): a channels-last view, no copy
            x = x.permute(0, 3, 1, 2)
        x = x.to(self.device, dtype=self.dtype) if self.dtype is not None else x.to(self.device)
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @torch.inference_mode()
    def run(self, batch: np.ndarray | torch.Tensor, canvas_hw: np.ndarray | None = None
            ) -> tuple[torch.Tensor, ...]:
        """Flattened logits and deltas; for a joint model also the (B, K, S, S) segmentation logits."""
        outputs = self.network(self.to_tensor(batch))
        if self.outputs == "seg":
            return (outputs.float(),)
        out = flatten_outputs(outputs[0], outputs[1], self.config.num_classes)
        if out[0].dtype != torch.float32:
            out = (out[0].float(), out[1].float())
        if len(outputs) == 3:  # joint detection + segmentation
            out = (*out, outputs[2].float())
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return out
