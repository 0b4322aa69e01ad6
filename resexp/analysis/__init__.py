"""Measurements of a model's internals during training: residual-stream and gradient probes."""

from resexp.analysis.probes import angular_distance, block_grad_norms, skip_loss_delta, stream_probes, supports_probes

__all__ = ["angular_distance", "block_grad_norms", "skip_loss_delta", "stream_probes", "supports_probes"]
