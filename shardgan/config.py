"""Typed run configuration: one dataclass per TOML section, each key documented below it and
range-checked when the section is built, so an impossible value stops at start-up.

Reading a TOML file and overrides into a Config (and writing one back) is configfile.py's job;
the original project's INI, ini.py's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

MAX_SEED = 2**63 - 1
"""Seeds go to numpy's SeedSequence (non-negative) and torch.Generator.manual_seed (64 bits)."""
DEVICES = re.compile(r"auto|cpu|cuda(:\d+)?")


@dataclass
class DataConfig:
    shards: str = "data/demo_shards"
    """Directory with manifest.json (or a file path to one), or a brace pattern of shard paths or
    URLs: http(s)://, s3:// (the `s3` extra), file: or `pipe:COMMAND` ("::" separates patterns).
    Other splits (val) are found beside the first shard, under their manifest names."""
    manifest: str = ""
    """manifest.json path or URL (empty: the one beside the first shard)."""
    cache_dir: str = ""
    """Node-local directory for copies of remote shards: each is downloaded once per node, shared
    by all its ranks and workers, and read like a local shard. Empty: shardgan-cache-<uid> in the
    system temp directory, with -job<SLURM_JOB_ID> under SLURM, so two jobs' caches never mix."""
    cache_limit: str = "auto"
    """Evict least-recently-used cached shards past this size, e.g. "200GB" or "500MB"; "auto": half
    of what the cache's file system has free (plus what the cache holds) at start; "0": never."""
    prefetch_shards: int = 2
    """Remote shards each rank's loader downloads ahead of the one it is reading."""
    read_ahead: int = 1
    """Local shards each rank's loader reads ahead into the page cache, in large sequential
    requests, while its workers read the current one: on a parallel file system the first epoch is
    otherwise one small random read per sample. Pages already cached are not read again. 0: off."""
    fetch_attempts: int = 5
    """Tries per download of a shard or manifest before a one-line error names its URL."""
    fetch_backoff_s: float = 1.0
    """Wait before the second try; doubles for each further one."""
    fetch_timeout_s: float = 60.0
    """Socket timeout for http(s) and s3: a stalled connection fails the try."""
    split: str = "train"
    """Which split of the manifest to train on (pack writes train and, with --val, val)."""
    batch_size: int = 128
    """Per-rank batch size; the global batch is batch_size * world_size."""
    num_workers: int = 2
    """Reading processes per rank for compressed shards (they live as long as the loader; 0: the
    training thread decodes). Raw shards are always copied in the training thread, faster."""
    seed: int = 0
    """Seeds the epoch plan (shard and sample order)."""
    canonical_nodes: int = 0
    """Equal pieces the epoch order is cut into, one per node of the first start, so that each node
    reads only its share of the shards (docs/loader.md). 0: the node count of the run's first
    start. Fixed for a run; a multiple of every node count the run may resume on keeps each node
    on its own share (e.g. 6 for 2 or 3 nodes)."""
    on_corrupt: str = "skip"
    """skip: report and replace a corrupt sample within its batch; fail: stop with its shard and key."""
    pin_memory: bool = True
    """Page-locked batches for faster host-to-GPU copies (CUDA only)."""
    prefetch_factor: int = 4
    """Batches each reading process prepares ahead (each is a pre-allocated buffer, reused)."""
    progress_every_s: float = 60.0
    """Off a terminal (a job log), a progress line (images, rate, ETA) every this many seconds; 0: none."""
    decode_device: str = "cpu"
    """cpu, or cuda: JPEG shards are decoded on the GPU by nvjpeg, the CPU only reads bytes."""
    translate_px: int = 2
    """Random translation of up to this many pixels (the original project's Resize(+2) + RandomCrop)."""
    color_jitter: float = 0.05
    """Brightness/contrast/saturation jitter strength; 0 disables."""
    hflip: bool = False
    """Off by default: game HUDs are not mirror-symmetric."""

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "data.batch_size must be >= 1")
        _check(0 <= self.seed <= MAX_SEED, "data.seed must be in [0, 2**63)")
        _check(self.num_workers >= 0, "data.num_workers must be >= 0")
        _check(self.canonical_nodes >= 0, "data.canonical_nodes must be >= 0 (0: the node count)")
        _check(self.on_corrupt in ("skip", "fail"), "data.on_corrupt must be 'skip' or 'fail'")
        _check(self.translate_px >= 0, "data.translate_px must be >= 0")
        _check(self.color_jitter >= 0, "data.color_jitter must be >= 0")
        _check(self.prefetch_factor >= 1, "data.prefetch_factor must be >= 1")
        _check(self.progress_every_s >= 0, "data.progress_every_s must be >= 0")
        _check(self.decode_device in ("cpu", "cuda"), "data.decode_device must be 'cpu' or 'cuda'")
        _check(self.prefetch_shards >= 0, "data.prefetch_shards must be >= 0")
        _check(self.read_ahead >= 0, "data.read_ahead must be >= 0")
        _check(self.fetch_attempts >= 1, "data.fetch_attempts must be >= 1")
        _check(self.fetch_backoff_s >= 0 and self.fetch_timeout_s > 0, "data.fetch_backoff_s must be >= 0, data.fetch_timeout_s > 0")
        self.cache_limit_bytes  # refused now, not at the first download

    @property
    def cache_limit_bytes(self) -> int | None:
        """data.cache_limit in bytes (0: no limit; None: auto, worked out from the cache's disk)."""
        return None if self.cache_limit == "auto" else parse_bytes(self.cache_limit, "data.cache_limit")


LOSS_NAMES = ("bce", "hinge", "rpgan")
"""The losses `model.loss` may name (losses.LOSSES holds one pair of functions per name)."""
UPSAMPLE_NAMES = ("convtranspose", "nearest")
"""How G doubles its size (`model.upsample`)."""


@dataclass
class ModelConfig:
    width: int = 64
    """Image width in pixels; must equal the shards' (pack --size)."""
    height: int = 64
    """Image height in pixels; must equal the shards'."""
    channels: int = 3
    """3 (RGB) or 1 (grayscale); must equal the shards'."""
    nz: int = 100
    """Latent vector size."""
    ngf: int = 64
    """G's feature maps in its last layer (doubling per layer up to 8x)."""
    ndf: int = 64
    """D's feature maps in its first layer (doubling per layer up to 8x)."""
    loss: str = "bce"
    """bce: the original project's loss; hinge: hinge loss (use with spectral_norm); rpgan: R3GAN's
    relativistic pairing loss (use with optim.r1_gamma, r2_gamma and d_batchnorm=false). See
    docs/losses.md."""
    spectral_norm: bool = False
    """Spectral norm on D's convolutions (and no BatchNorm in D)."""
    d_batchnorm: bool = True
    """BatchNorm in D's hidden layers (the original project's); false: none, as in R3GAN's and
    ProGAN's D. Ignored with spectral_norm, which has none."""
    minibatch_std: int = 0
    """ProGAN's minibatch-stddev layer before D's last convolution, over groups of this many
    images (StyleGAN2: 4; must divide data.batch_size): D sees how alike a group is, so a
    collapsed G is easy to tell from the data. 0: off."""
    upsample: str = "convtranspose"
    """How G doubles its size: convtranspose (the DCGAN's stride-2 transposed convolutions) or
    nearest (nearest-neighbour resizing, then a 3x3 convolution: no checkerboard pattern,
    ~2x G's arithmetic)."""

    def __post_init__(self) -> None:
        _check(self.width >= 8 and self.height >= 8, "model.width and model.height must be >= 8")
        _check(self.channels in (1, 3), "model.channels must be 1 or 3")
        _check(self.loss in LOSS_NAMES, f"model.loss must be one of {', '.join(LOSS_NAMES)}, got {self.loss!r}")
        _check(self.upsample in UPSAMPLE_NAMES, f"model.upsample must be one of {', '.join(UPSAMPLE_NAMES)}, got {self.upsample!r}")
        _check(min(self.nz, self.ngf, self.ndf) >= 1, "model.nz, ngf, ndf must be >= 1")
        _check(self.minibatch_std >= 0 and self.minibatch_std != 1, "model.minibatch_std must be 0 (off) or a group size >= 2")


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    """Adam learning rate of G (the original project's 2e-4)."""
    lr_d: float = 2e-4
    """Adam learning rate of D."""
    beta1: float = 0.5
    """Adam beta1; DCGAN's 0.5 (the default 0.9 oscillates)."""
    beta2: float = 0.999
    """Adam beta2."""
    r1_gamma: float = 0.0
    """Zero-centred gradient penalty on the reals: D's loss += r1_gamma / 2 * E[||grad_x D(x)||^2]
    (R1; R3GAN pairs it with R2 at the same gamma). 0: off."""
    r2_gamma: float = 0.0
    """The same penalty on the fakes, E over G(z) (R2). 0: off."""
    penalty_every_steps: int = 1
    """Lazy regularization (StyleGAN2): the penalties only at steps divisible by this, scaled by it,
    so their average pull is unchanged at a fraction of the cost."""
    decay_steps: int = 0
    """Cosine decay (R3GAN's schedule) of both learning rates to lr_final and of r1_gamma/r2_gamma
    to gamma_final times their values over this many steps, then held; a function of the step
    alone, so exact under resume. 0: constant (the original project's)."""
    lr_final: float = 0.25
    """The learning rates' share left at the end of the decay (R3GAN: 2e-4 -> 5e-5)."""
    gamma_final: float = 0.1
    """The penalties' share left at the end of the decay (R3GAN: a tenth)."""

    def __post_init__(self) -> None:
        _check(self.lr_g > 0 and self.lr_d > 0, "optim.lr_g and optim.lr_d must be > 0")
        _check(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        _check(self.r1_gamma >= 0 and self.r2_gamma >= 0, "optim.r1_gamma and optim.r2_gamma must be >= 0")
        _check(self.penalty_every_steps >= 1, "optim.penalty_every_steps must be >= 1")
        _check(self.decay_steps >= 0, "optim.decay_steps must be >= 0 (0: no decay)")
        _check(0 < self.lr_final <= 1 and 0 <= self.gamma_final <= 1, "optim.lr_final must be in (0, 1] and optim.gamma_final in [0, 1]")

    def decayed(self, step: int) -> float:
        """How far the cosine decay has gone at `step`: 1 at the start, 0 from decay_steps on."""
        if not self.decay_steps:
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step / self.decay_steps, 1.0)))

    def lr_scale(self, step: int) -> float:
        return self.lr_final + (1 - self.lr_final) * self.decayed(step)

    def gamma_scale(self, step: int) -> float:
        return self.gamma_final + (1 - self.gamma_final) * self.decayed(step)


@dataclass
class TrainConfig:
    epochs: int = 1000
    """Passes over the train split (the last, partial global batch of each is left out)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: run all epochs)."""
    seed: int = 0
    """Seeds weights, latent noise and augmentation (derived per rank and step)."""
    device: str = "auto"
    """auto: cuda if available else cpu."""
    precision: str = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU; or fp32 / bf16."""
    channels_last: bool = True
    """channels_last memory format on CUDA (ignored on CPU, where it only slows the convolutions)."""
    compile: bool = False
    """torch.compile G and D (worth it on GPUs; the first steps then take a minute longer)."""
    ema_decay: float = 0.999
    """EMA of G's weights used for samples; 0 disables."""
    log_every_steps: int = 10
    """A metrics.jsonl record, TensorBoard scalars and a train.log line every N steps."""
    sample_every_steps: int = 500
    """A sample grid from the fixed noise every N steps (0: none but at epoch ends, if asked for)."""
    sample_at_epoch_end: bool = False
    """Also a grid (and the loss curve) at each epoch end (the original project's fake_epoch_N.png);
    off by default: a large collection on many GPUs ends an epoch every few seconds."""
    deterministic: bool = False
    """On CUDA: deterministic kernels (cudnn deterministic, no benchmark, no TF32,
    torch.use_deterministic_algorithms, CUBLAS_WORKSPACE_CONFIG), so a resumed run can be
    bit-exact there too, at some speed. The CPU is deterministic either way."""
    backend: str = "auto"
    """Process group backend under torchrun: auto (nccl on CUDA, gloo on CPU), or gloo (also with
    CUDA tensors: several ranks may then share one GPU, as the GPU check does)."""
    collective_timeout_s: float = 600.0
    """How long any collective may wait for the other ranks before the job fails (nccl's and
    gloo's timeout). Work only rank 0 does (evaluation) never counts against it: the others wait
    in heartbeats of a tenth of it (at most 10 s)."""
    collapse_logs: int = 20
    """Collapse watchdog: warn (and mark metrics.jsonl) once D has won for this many log lines in
    a row; 0 disables."""
    collapse_evals: int = 2
    """Collapse watchdog: warn (and mark metrics.jsonl, naming the best checkpoint) once the
    samples' diversity, measured at each evaluation (eval.every_steps), has been below 0.4 of
    the val images' for this many evaluations in a row; 0 disables."""
    collapse_after_steps: int = 500
    """Collapse watchdog: diversity counts from this step on. Before, a healthy G still draws a
    few blurry means (a demo run: 0.12 and 0.16 of the data's spread at steps 200 and 400, 0.71
    at 600), which no measure of spread tells from a collapse."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "train.epochs must be >= 1")
        _check(self.max_steps >= 0, "train.max_steps must be >= 0")
        _check(0 <= self.seed <= MAX_SEED, "train.seed must be in [0, 2**63)")
        _check(DEVICES.fullmatch(self.device) is not None, f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        _check(self.precision in ("auto", "fp32", "bf16"), "train.precision must be auto, fp32 or bf16")
        _check(0.0 <= self.ema_decay < 1.0, "train.ema_decay must be in [0, 1)")
        _check(self.log_every_steps >= 1, "train.log_every_steps must be >= 1")
        _check(self.sample_every_steps >= 0, "train.sample_every_steps must be >= 0")
        _check(self.collapse_logs >= 0, "train.collapse_logs must be >= 0")
        _check(self.collapse_evals >= 0, "train.collapse_evals must be >= 0")
        _check(self.collapse_after_steps >= 0, "train.collapse_after_steps must be >= 0")
        _check(self.collective_timeout_s >= 1, "train.collective_timeout_s must be >= 1")
        _check(self.backend in ("auto", "gloo"), "train.backend must be auto or gloo")


DIFFAUGMENT_OPS = ("translation", "cutout", "color")
"""The differentiable augmentations `diffaugment.policy` may list (applied in this order)."""


@dataclass
class DiffAugmentConfig:
    """Differentiable augmentation in front of D (DiffAugment; ADA's adaptive probability).
    Unlike data.translate_px/color_jitter (reals only), it is applied to reals and fakes alike,
    in the D step and in the G step, so G is not pushed to reproduce it. The [diffaugment]
    section; its old name [augment] still loads (configfile.RENAMED_SECTIONS)."""

    policy: str = ""
    """Comma-separated subset of translation, cutout, color; empty: D sees the images as they are."""
    probability: float = 1.0
    """Chance that each op of the policy is applied to an image (with ADA: p's starting value)."""
    translation_ratio: float = 0.125
    """translation: shift by up to this fraction of the height and width (uncovered pixels are 0)."""
    cutout_ratio: float = 0.5
    """cutout: the erased rectangle's sides, as fractions of the image's height and width."""
    ada_target: float = 0.0
    """ADA: raise p while E[sign(D(real))] is above this target, lower it below (the paper: 0.6);
    0 keeps p fixed at `probability`."""
    ada_interval_steps: int = 4
    """ADA: steps between updates of p."""
    ada_ramp_images: int = 100_000
    """ADA: global images over which p can move from 0 to 1 (the paper: 500k)."""

    def __post_init__(self) -> None:
        ops = [op.strip() for op in self.policy.split(",") if op.strip()]
        unknown = [op for op in ops if op not in DIFFAUGMENT_OPS]
        _check(not unknown, f"diffaugment.policy: unknown {', '.join(unknown)} (choose from {', '.join(DIFFAUGMENT_OPS)}, comma-separated)")
        _check(0.0 <= self.probability <= 1.0, "diffaugment.probability must be in [0, 1]")
        _check(0.0 < self.translation_ratio <= 0.5, "diffaugment.translation_ratio must be in (0, 0.5]")
        _check(0.0 < self.cutout_ratio < 1.0, "diffaugment.cutout_ratio must be in (0, 1)")
        _check(0.0 <= self.ada_target < 1.0, "diffaugment.ada_target must be in [0, 1)")
        _check(self.ada_interval_steps >= 1, "diffaugment.ada_interval_steps must be >= 1")
        _check(self.ada_ramp_images >= 1, "diffaugment.ada_ramp_images must be >= 1")


@dataclass
class CheckpointConfig:
    every_steps: int = 0
    """A checkpoint every N steps (0: none by steps; a step's cost differs tenfold between a laptop
    and an 8-GPU node, so the default cadence is by time)."""
    every_minutes: float = 10.0
    """A checkpoint when this much time has passed since the last save (rank 0's clock, agreed by
    all ranks); 0 disables time-based checkpoints. Bounds the work a preemption loses."""
    at_epoch_end: bool = False
    """Also checkpoint when an epoch ends (the original project saved weights once per epoch; on
    a large collection an epoch ends every few seconds, so off by default)."""
    keep_last: int = 3
    """Complete checkpoints kept (the newest and the one just written are never deleted)."""
    resume: str = "auto"
    """auto: newest valid checkpoint in the run dir if any; never; or a checkpoint path."""
    allow_config_change: bool = False
    """Allow resuming with a batch size, world size or train.seed change, which breaks exactness
    (an image size change is always refused: the weights fit one size)."""

    def __post_init__(self) -> None:
        _check(self.keep_last >= 1, "checkpoint.keep_last must be >= 1")
        _check(self.resume != "", "checkpoint.resume must be auto, never or a checkpoint path")
        _check(self.every_steps >= 0 and self.every_minutes >= 0, "checkpoint.every_steps and every_minutes must be >= 0")


@dataclass
class RunConfig:
    root: str = "runs"
    """Directory holding the run directories."""
    name: str = ""
    """Run directory name under root; empty: the config file's name (configs/gc7m.toml -> gc7m),
    or "default" without one, so rerunning the same command resumes the same run."""


@dataclass
class EvalConfig:
    every_steps: int = 0
    """Compute SWD against the val split every N steps on rank 0 (0: only at the end)."""
    num_images: int = 512
    """Real (val) and generated images compared; fewer val images than this: a warning, and that many (SWD, FID/KID)."""
    swd_mode: str = "paper"
    """paper: ProGAN's SWD (128 patches per image per level, each set normalized by its own
    statistics); real_stats: 64 patches, both sets normalized by the real set's (a colour cast counts)."""
    fid_weights: str = ""
    """Path to the FID Inception weights (pt_inception-2015-12-05-6726825d.pth, as torch-fidelity
    uses) for FID/KID via torchmetrics; empty: skip FID/KID. Never downloaded."""

    def __post_init__(self) -> None:
        _check(self.every_steps >= 0, "eval.every_steps must be >= 0")
        _check(self.num_images >= 2, "eval.num_images must be >= 2")
        _check(self.swd_mode in ("paper", "real_stats"), "eval.swd_mode must be 'paper' or 'real_stats'")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    diffaugment: DiffAugmentConfig = field(default_factory=DiffAugmentConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)


BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_bytes(text: str, where: str) -> int:
    """"200GB" -> 200_000_000_000; "1.5GiB", "500 MB", "1000000" and "0" also work (a flag or key
    that needs a positive size checks that itself). `where` names the flag or key in the error."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*", text)
    unit = match[2].upper() if match else ""
    if not match or unit not in BYTE_UNITS:
        raise ConfigError(f"{where}: expected a size like 200GB, 1.5GiB or 1000000, got {text!r}")
    return int(float(match[1]) * BYTE_UNITS[unit])


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
