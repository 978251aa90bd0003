"""The run configuration. Its defaults are the authors' recipe (shared/reference/recipe.md).

Every choice the paper leaves open is a field here, so one object describes a run completely
and is stored verbatim in every results JSON.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DATASETS = ("cifar10", "cifar100", "synthetic")
MODELS = ("resnet18", "small_cnn", "mlp")
METHODS = ("ssvi", "dense_vi", "rigl", "dense")  # dense = deterministic dense network
ALLOCATIONS = ("uniform", "erk")
REMOVALS = ("abs_mu", "snr", "e_abs", "snr_abs", "e_exp_abs", "snr_exp_abs")
ADDITIONS = ("mc1", "mean", "mck")  # eq. 9 criteria 1, 2, 3
REGROW_SIGMA = ("mean", "const")


@dataclass
class TrainConfig:
    # data
    dataset: str = "cifar10"
    data_dir: str | None = None          # None: $SSVI_DATA, else ./data
    download: bool = False               # allow torchvision's download when data is absent
    val_size: int = 0                    # held-out validation images taken from the train set
    train_subset: int | None = None      # use only the first N training images (small presets)
    test_subset: int | None = None       # use only the first N test images
    augment: bool = True                 # random crop (pad 4) + horizontal flip
    # model
    model: str = "resnet18"
    width: float = 1.0                   # channel multiplier (1.0 = 64/128/256/512)
    method: str = "ssvi"
    density: float = 0.1                 # 1 - sparsity, per sparse tensor
    first_layer_dense: bool = True       # the recipe keeps the stem conv dense
    allocation: str = "uniform"
    # Bayesian layers (recipe: prior N(0, 0.005^2), mu ~ N(0, 0.01^2), sigma0 = |N(6e-4, 5e-4^2)|)
    prior_sigma: float = 0.005
    mu_init_std: float = 0.01
    sigma_init_mean: float = 0.0006
    sigma_init_std: float = 0.0005
    kl_scale: float = 0.01               # loss = CE + beta * kl_scale / N_train * KL_sum
    kl_warmup: bool = True               # beta = min(2 * epoch / epochs, 1), epoch from 1
    # subspace updates (Algorithm 1)
    update_every: int = 100              # Delta T, optimisation steps between mask updates
    t_end_frac: float = 0.75             # updates stop at T_end = t_end_frac * total steps
    alpha: float = 0.3                   # r_t = alpha / 2 * (1 + cos(pi t / T_end))
    removal: str = "snr_abs"
    lam: float = 1.0                     # lambda of eq. 8
    addition: str = "mc1"
    addition_k: int = 3                  # K of the K-step Monte Carlo addition criterion
    regrow_sigma: str = "mean"           # mean of active sigma in the tensor, or a constant
    regrow_sigma_const: float = 1e-6
    # optimisation (SGD, two parameter groups, cosine LR stepped per epoch)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.01                     # mu, BatchNorm and biases
    lr_rho: float = 0.01                 # rho
    momentum: float = 0.9
    weight_decay: float = 5e-4           # not applied to rho
    # evaluation
    eval_samples: int = 5                # K posterior draws, each shared by the whole test set
    eval_every: int = 1                  # epochs between test evaluations (last epoch always)
    # run
    seed: int = 0
    device: str = "auto"                 # auto: cuda if available, else cpu
    fast: bool | None = None             # None: the fast path on CUDA, the reference path on CPU
    run_dir: str | None = None           # checkpoints; None: no checkpoints
    results_path: str | None = None      # results JSON; None: not written
    progress: bool = True
    extra: dict = field(default_factory=dict)  # free-form tags stored with the results

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the allowed values for any bad field."""
        def choice(name, allowed):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not allowed; choose one of "
                                 f"{', '.join(map(repr, allowed))}")
        choice("dataset", DATASETS)
        choice("model", MODELS)
        choice("method", METHODS)
        choice("allocation", ALLOCATIONS)
        choice("removal", REMOVALS)
        choice("addition", ADDITIONS)
        choice("regrow_sigma", REGROW_SIGMA)
        if not (0.0 < self.density <= 1.0):
            raise ValueError(f"density={self.density!r} must be in (0, 1] "
                             "(density = 1 - sparsity; 0.1 means 90% sparse)")
        for name in ("epochs", "batch_size", "update_every", "eval_samples", "eval_every",
                     "addition_k"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("prior_sigma", "lr", "lr_rho", "width"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        if not (0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha!r} must be in [0, 1]")
        if not (0.0 <= self.t_end_frac <= 1.0):
            raise ValueError(f"t_end_frac={self.t_end_frac!r} must be in [0, 1]")
        if self.lam <= 0:
            raise ValueError(f"lam={self.lam!r} must be > 0 (lambda of eq. 8)")
        if self.val_size < 0:
            raise ValueError(f"val_size={self.val_size!r} must be >= 0")

    @property
    def bayesian(self) -> bool:
        return self.method in ("ssvi", "dense_vi")

    @property
    def sparse(self) -> bool:
        return self.method in ("ssvi", "rigl")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {', '.join(sorted(unknown))}")
        return cls(**d)
