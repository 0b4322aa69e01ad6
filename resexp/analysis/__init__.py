"""Measurements of a model's internals during training: residual-stream and gradient probes."""

from resexp.analysis.probes import block_grad_norms, stream_probes, supports_probes

__all__ = ["block_grad_norms", "stream_probes", "supports_probes"]
