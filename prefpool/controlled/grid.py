"""The grid of the paired design (``experiments/controlled/design.md``): its methods, cells and comparisons.

A *cell* is one training run: (data seed, training seed, β, annotator-noise arm, method, learning
rate). The data seed makes the reference model, the samples and the labels. The training seed sets
the data order and the kernel's draws. The arm picks the annotator that labels the same samples.
Cells that differ only in the method share data and data order: that is the pairing.

A *comparison* says "A beats B" for one of the four results of the MC-PO slides (and OnMC-PO). The
summary reads it per arm, β and matched KL with ``verdict``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefpool.losses import losses_for_kind

from .data import ANNOTATOR

DATA_SEEDS = (0, 1, 2)
TRAIN_SEEDS = (0, 1, 2)
BETAS = (1.0, 3.0)  # where the sample kernel is far from uniform (RESULTS.md 1.6, 1.7)
NULL_BETA = 0.1  # the kernel within ~0.03 nats of uniform: the null control
LRS = (2.5e-4, 5e-4, 1e-3, 2e-3)  # the same grid for every method
MATCHED_KL = (0.5, 1.0, 2.0)  # nats
MIN_KERNEL_KL = 0.3  # a run of a reward-weighted kernel at a non-null β is invalid below this mean KL to uniform
ARMS = {
    "std": ANNOTATOR,  # today's labels: Bradley-Terry at temperature 1
    "low": "prefpool.controlled.task:sharp_annotator",  # low noise: Bradley-Terry at temperature 0.1
}
RESULTS = ("main", "kernel", "noise", "m", "online")
# Kernels whose weights depend on β through the implicit rewards: the validity rule applies to them.
WEIGHTED_KERNELS = ("sample", "sample_pool", "rao_blackwell", "listwise")


@dataclass(frozen=True)
class Method:
    name: str
    table: str  # "mcpo" (the build table), "pair", "garbage", "garbage_only"; "online" for OnMC-PO
    loss: str = "mcpo"
    kernel: str | None = None
    num_negatives: int = 1

    def overrides(self) -> dict:
        """The TrainConfig keys this method sets."""
        out: dict = {"loss": self.loss}
        if self.kernel is not None:
            out["kernel"] = self.kernel
        if self.num_negatives != 1:
            out["num_negatives"] = self.num_negatives
        return out

    @property
    def weighted(self) -> bool:
        return self.kernel in WEIGHTED_KERNELS


def _methods() -> dict[str, Method]:
    methods = [
        Method("mcpo", "mcpo", kernel="sample"),  # the paper's kernel, M = 1
        Method("dpo-random", "mcpo", kernel="uniform"),  # the paper's "Random", M = 1
        Method("mcpo-max", "mcpo", kernel="max"),
        Method("mcpo-min", "mcpo", kernel="min"),
        Method("mcpo-m2", "mcpo", kernel="sample", num_negatives=2),
        Method("mcpo-m3", "mcpo", kernel="sample", num_negatives=3),
        Method("random-m2", "mcpo", kernel="uniform", num_negatives=2),
        Method("random-m3", "mcpo", kernel="uniform", num_negatives=3),
        Method("garbage-mcpo", "garbage", kernel="sample"),  # the garbage answer in every pool
        Method("garbage-dpo-neg", "garbage_only", kernel="uniform"),  # DPO(-): the garbage answer as rejected
        Method("garbage-dpo-random", "garbage", kernel="uniform"),
        Method("onmcpo", "online", kernel="sample"),  # one LR schedule across rounds
    ]
    # every pairwise loss prefpool has, on the preferred answer against one fixed random pool member
    methods += [Method(f"pair-{loss}", "pair", loss=loss) for loss in losses_for_kind("pairwise")]
    return {m.name: m for m in methods}


METHODS = _methods()
PAIRWISE = tuple(name for name in METHODS if name.startswith("pair-"))


@dataclass(frozen=True)
class Comparison:
    result: str
    a: str
    b: str  # "a beats b"
    primary: bool  # the result's verdict is the conjunction of its primary comparisons
    null_control: bool  # a and b differ only in the kernel: the β = 0.1 readings are a null control
    # a difference of differences: (a - b) - (c - d), e.g. MC-PO's gain from M against Random's
    c: str | None = None
    d: str | None = None

    @property
    def label(self) -> str:
        if self.c is None:
            return f"{self.a} − {self.b}"
        return f"({self.a} − {self.b}) − ({self.c} − {self.d})"

    def methods(self) -> tuple[str, ...]:
        return tuple(m for m in (self.a, self.b, self.c, self.d) if m is not None)


COMPARISONS = (
    Comparison("main", "mcpo", "dpo-random", primary=True, null_control=True),
    *(Comparison("main", "mcpo", p, primary=False, null_control=False) for p in PAIRWISE),
    Comparison("kernel", "mcpo", "dpo-random", primary=True, null_control=True),
    Comparison("kernel", "mcpo", "mcpo-max", primary=True, null_control=False),
    Comparison("kernel", "mcpo", "mcpo-min", primary=True, null_control=False),
    Comparison("noise", "garbage-mcpo", "garbage-dpo-neg", primary=True, null_control=False),
    Comparison("noise", "garbage-mcpo", "garbage-dpo-random", primary=False, null_control=True),
    Comparison("m", "mcpo-m3", "mcpo", primary=True, null_control=False),
    Comparison("m", "mcpo-m2", "mcpo", primary=False, null_control=False),
    Comparison("m", "random-m2", "dpo-random", primary=False, null_control=False),
    Comparison("m", "random-m3", "dpo-random", primary=False, null_control=False),
    Comparison("m", "mcpo-m3", "mcpo", primary=False, null_control=True, c="random-m3", d="dpo-random"),
    Comparison("m", "mcpo-m3", "random-m3", primary=False, null_control=True),
    Comparison("online", "onmcpo", "mcpo", primary=True, null_control=False),
)


def methods_of(results: tuple[str, ...]) -> tuple[str, ...]:
    """The methods the comparisons of ``results`` need, in ``METHODS`` order."""
    needed = {m for c in COMPARISONS if c.result in results for m in c.methods()}
    return tuple(name for name in METHODS if name in needed)


@dataclass(frozen=True)
class Cell:
    data_seed: int
    train_seed: int
    beta: float
    arm: str
    method: str
    lr: float

    @property
    def id(self) -> str:
        return f"d{self.data_seed}-t{self.train_seed}-b{self.beta:g}-{self.arm}-{self.method}-lr{self.lr:g}"

    @property
    def pair(self) -> tuple[int, int]:
        return (self.data_seed, self.train_seed)


def invalid_reason(cell: Cell, kernel: dict | None) -> str | None:
    """Why a finished run does not count, or ``None``: a reward-weighted kernel at a non-null β whose mean
    KL to uniform over the run's steps is under ``MIN_KERNEL_KL`` draws nearly as a uniform pick, so
    it cannot test anything the kernel's weighting would do."""
    method = METHODS[cell.method]
    if not method.weighted or cell.beta == NULL_BETA:
        return None
    if kernel is None:
        return "no kernel diagnostics in metrics.jsonl"
    kl = kernel["mcpo/kernel_kl_uniform"]
    if kl < MIN_KERNEL_KL:
        return f"kernel KL to uniform {kl:.3f} < {MIN_KERNEL_KL}"
    return None


def cells(
    *,
    methods: tuple[str, ...],
    data_seeds: tuple[int, ...] = DATA_SEEDS,
    train_seeds: tuple[int, ...] = TRAIN_SEEDS,
    betas: tuple[float, ...] = (*BETAS, NULL_BETA),
    arms: tuple[str, ...] = tuple(ARMS),
    lrs: tuple[float, ...] = LRS,
) -> list[Cell]:
    """Every cell, data seed outermost (one data set is made at a time) and method innermost (the cells
    of one seed pair finish together, so a partial run already holds complete pairs)."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}")
    return [
        Cell(d, t, b, arm, m, lr)
        for d in data_seeds
        for arm in arms
        for t in train_seeds
        for b in betas
        for lr in lrs
        for m in methods
    ]
