"""resexp: reproduce the degradation problem (He et al. 2015) and its fixes."""

__version__ = "0.1.0"
