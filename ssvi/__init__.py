"""ssvi: Sparse Subspace Variational Inference (Li, Miao, Qiu, Zhang, ICLR 2024).

    import ssvi
    model = ssvi.bayesianize(my_model)                 # nn.Conv2d / nn.Linear -> Bayesian layers
    ctrl = ssvi.SubspaceController(model, density=0.1, t_end=7500, optimizer=opt)
    loss = ce + beta * kl_scale / n_train * ssvi.kl(model)

or, for the whole recipe, ``ssvi.train(ssvi.TrainConfig(...))``.
"""
from . import criteria
from .config import TrainConfig
from .layers import BayesConv2d, BayesLayer, BayesLinear, bayes_layers, bayesianize, kl, mode, set_mode
from .subspace import SubspaceController, allocate_densities, replacement_fraction

__version__ = "0.1.0"


def train(cfg: TrainConfig, **kw) -> dict:
    """Run the full training recipe for ``cfg`` (see :func:`ssvi.trainer.train`)."""
    from .trainer import train as _train
    return _train(cfg, **kw)


__all__ = ["BayesConv2d", "BayesLayer", "BayesLinear", "SubspaceController", "TrainConfig",
           "allocate_densities", "bayes_layers", "bayesianize", "criteria", "kl", "mode",
           "replacement_fraction", "set_mode", "train"]
