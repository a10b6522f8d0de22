"""Every setting of a run, in one dataclass: defaults < config file < command-line flags."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .errors import BadInput


BACKENDS = ["executorch", "tflite", "coreml"]  # what --backends accepts; converters.register() adds a new backend
DEVICES = ("auto", "cpu", "cuda", "mps")
LOADERS = ("auto", "memory", "stream")
OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("none", "step", "cosine")
MIN_IMAGE_SIZE = 8
DYNAMIC_BATCH_MIN, DYNAMIC_BATCH_MAX = 16, 1024


def _opt(default, help: str, group: str = "run", **kw):
    return field(default=default, metadata={"help": help, "group": group, **kw})


@dataclass
class RunConfig:
    # data and model
    dataset: str = _opt("mnist", "mnist | fashion-mnist | cifar10 | mnist-5k | imagefolder:PATH", "data")
    data_dir: str = _opt("data", "where datasets are found or downloaded", "data")
    model: str = _opt("convnet", "convnet | cifarcnn | torchvision:NAME | timm:NAME | MODULE:FACTORY | path/to/file.py:FACTORY", "data")
    weights: str | None = _opt(None, "optional state_dict (.pt) to initialise the model from", "data")
    pretrained: bool = _opt(False, "torchvision:NAME or timm:NAME: start from the published ImageNet weights, new head", "data")
    image_size: int | None = _opt(None, "input side in pixels (default: the model's own)", "data")
    limit_train: int = _opt(0, "use only the first N training images (0 = all)", "data")
    limit_test: int = _opt(0, "use only the first N test images (0 = all)", "data")
    loader: str = _opt("auto", "auto | memory | stream: stream decodes images from disk in DataLoader workers "
                       "(auto: imagefolder: streams, the built-in sets stay in memory)", "data")
    workers: int = _opt(2, "DataLoader worker processes that decode a streamed dataset (0 = in the training process)", "data")
    stats_images: int = _opt(2000, "streamed sets: measure mean/std on a seeded sample of N training images (0 = all)", "data")
    # fp32 training
    epochs: int = _opt(3, "fp32 training epochs", "train")
    batch_size: int = _opt(64, "training batch size", "train")
    lr: float = _opt(1e-3, "fp32 learning rate", "train")
    optimizer: str = _opt("adam", "adam | adamw | sgd (fp32 training and QAT)", "train")
    momentum: float = _opt(0.9, "SGD momentum", "train")
    weight_decay: float = _opt(0.0, "weight decay (L2 for adam and sgd, decoupled for adamw)", "train")
    lr_schedule: str = _opt("step", "none | step (lr x --lr-gamma after every epoch) | cosine (to 0 at the last epoch)", "train")
    lr_gamma: float = _opt(0.7, "step schedule: factor applied after every epoch", "train")
    warmup_epochs: int = _opt(0, "epochs of linear warm-up from 0.01 x --lr to --lr before the schedule", "train")
    label_smoothing: float = _opt(0.0, "cross-entropy label smoothing (fp32 training and QAT)", "train")
    augment: bool = _opt(False, "3-channel data: random resized crop and horizontal flip of the training images", "train")
    augment_min_scale: float = _opt(0.08, "--augment: smallest crop, as a fraction of the image area", "train")
    bn_recalibration: int = _opt(50, "after the last fp32 epoch, re-estimate BatchNorm running statistics over N "
                                 "training batches with the final weights (0 = keep the running averages). Short "
                                 "runs need it: MobileNetV3's BatchNorm momentum 0.01 leaves them near their start", "train")
    seed: int = _opt(0, "seed for weights, data order and dropout", "train")
    threads: int = _opt(0, "torch CPU threads (0 = all cores)", "train")
    resume: bool = _opt(False, "continue an interrupted fp32 run from its last checkpoint", "train")
    # device and distributed training
    device: str = _opt("auto", "auto | cpu | cuda | mps for training, QAT, calibration and PyTorch evaluation "
                       "(auto: cuda, then mps, then cpu); export and verification run on the CPU", "compute")
    amp: bool = _opt(False, "mixed precision (float16 autocast + GradScaler) for fp32 training; CUDA only", "compute")
    sync_bn: bool = _opt(False, "torchrun on CUDA: SyncBatchNorm in fp32 training", "compute")
    # quantization
    qat_epochs: float = _opt(1.0, "QAT fine-tuning epochs (fractions allowed)", "quant")
    qat_max_steps: int = _opt(0, "cap on QAT steps (0 = no cap)", "quant")
    qat_lr: float = _opt(1e-4, "QAT learning rate", "quant")
    freeze_bn_at: float = _opt(0.6, "fraction of QAT steps after which BatchNorm statistics freeze", "quant")
    freeze_observers_at: float = _opt(0.8, "fraction of QAT steps after which quantization ranges freeze", "quant")
    distill: bool = _opt(False, "QAT learns from the fp32 model as teacher: KL divergence of temperature-softened "
                               "logits (x T^2) mixed with cross-entropy", "quant")
    distill_temperature: float = _opt(4.0, "--distill: softmax temperature T of teacher and student", "quant")
    distill_weight: float = _opt(0.5, "--distill: share of the distillation term in the loss (0 = plain "
                                      "cross-entropy, 1 = the teacher alone)", "quant")
    calib_batches: int = _opt(32, "calibration batches for PTQ", "quant")
    quant_mode: str = _opt("auto", "auto (export the better of PTQ and QAT) | qat | ptq", "quant")
    weight_bits: int = _opt(8, "weight bits: 8 | 4 (where a runtime has kernels for it; see `mobile-pipeline schemes`)", "quant")
    weight_granularity: str = _opt("per_channel", "per_channel | per_tensor | per_block (with --block-size)", "quant")
    block_size: int = _opt(32, "weights per block along the input channels, for per_block", "quant")
    weight_symmetry: str = _opt("symmetric", "symmetric (zero point 0) | asymmetric", "quant")
    activations: str = _opt("static", "static (calibrated int8 ranges) | dynamic (int8 ranges at run time) | none (weight-only)", "quant")
    calibration: str = _opt("histogram", "PTQ activation ranges: histogram | minmax | moving_average | percentile", "quant")
    # export
    backends: str = _opt("executorch,tflite,coreml", "comma-separated converter backends ('none': quantize and "
                                                      "measure in PyTorch only)", "export")
    allow_fallback: bool = _opt(False, "ExecuTorch: accept ops left outside XNNPACK", "export")
    dynamic_batch: int = _opt(0, "ExecuTorch: max batch for a dynamic-batch .pte (0 = static batch 1); TFLite exports stay batch 1", "export")
    nhwc: bool = _opt(False, "TFLite: channels-last (NHWC) input", "export")
    nbits: int | str = _opt(4, "Core ML palettization bits: 1, 2, 3, 4, 6 or 8, or auto:PP (per layer, the fewest of "
                                 "8, 6, 4, 3, 2 that keep the file shown within PP points of its float reference)",
                            "export")
    granularity: str = _opt("per_grouped_channel", "Core ML palettization: per_tensor | per_grouped_channel", "export")
    group_size: int = _opt(16, "Core ML channels per LUT group (per_grouped_channel)", "export")
    weight_threshold: int = _opt(2048, "Core ML: weights with fewer elements stay dense fp16", "export")
    # verification
    min_agreement: float = _opt(0.995, "minimum top-1 agreement of each artifact with its PyTorch reference", "verify")
    max_acc_drop: float = _opt(0.5, "maximum accuracy drop (percentage points) of each artifact against its PyTorch reference", "verify")
    max_quant_drop: float = _opt(2.0, "maximum accuracy drop (percentage points) of each quantized artifact against fp32, "
                                      "and against PTQ where PTQ ran: the cost of quantization", "verify")
    sample_size: int = _opt(100, "test images bundled into the demo apps", "verify")
    parity_check: bool = _opt(True, "verify: hold the int8 .pte and .tflite to each other layer by layer", "verify")
    parity_images: int = _opt(100, "test images run layer by layer by `parity` and the check in verify (0 = all)", "verify")
    max_parity_steps: int = _opt(0, "most output steps the int8 .pte and .tflite may differ by at any layer", "verify")
    max_parity_steps_float: int = _opt(1, "the same, at a layer that a runtime computes in float", "verify")
    max_local_steps: int = _opt(1, "teacher-forced parity: most output steps any layer of the int8 .pte or .tflite may "
                                   "differ from PyTorch's computation of it on the runtime's own inputs", "verify")
    rounding_agreement: float = _opt(0.98, "lowest top-1 agreement accepted for an int8 .pte or .tflite whose every "
                                           "layer passes --max-local-steps (the rest is rounding carried through "
                                           "the network); the accuracy checks still hold", "verify")
    near_tie_steps: int = _opt(8, "under --rounding-agreement: agreement is counted on the images whose int8 reference "
                                  "answer leads its runner-up by more than this many output steps (rounding carried "
                                  "through the network moves logits a few steps and turns only near ties); the near "
                                  "ties are reported apart; 0 counts every image", "verify")
    confidence: float = _opt(0.95, "confidence level of each verdict's interval: a check fails only when its whole "
                                   "interval lies beyond the threshold, and is 'not distinguishable' when it "
                                   "straddles it; also the level of the PTQ-vs-QAT McNemar test under auto", "verify")
    # host benchmark
    bench_warmup: int = _opt(20, "warm-up calls before each batch-1 latency measurement (at most --bench-seconds / 4 of them)", "bench")
    bench_iterations: int = _opt(200, "timed batch-1 calls per model and thread count, at most (batch 32: a tenth, at least 3)", "bench")
    bench_seconds: float = _opt(5.0, "time budget per latency measurement: fewer calls than --bench-iterations when "
                                     "a call is slow (at least 10 are timed)", "bench")
    bench_train_steps: int = _opt(30, "timed steps per round of the bare and the pipeline training loops, at most", "bench")
    bench_train_seconds: float = _opt(60.0, "time budget of each training-loop comparison (fp32, QAT): fewer steps, "
                                            "then fewer rounds (at least 1 step, 2 rounds) when a step is slow; "
                                            "0 = no budget", "bench")
    # quantization study (`mobile-pipeline study`; see study/)
    study_sections: str = _opt("all", "study sections: all, or some of error,sensitivity,mixed,sweep,pruning,wa (or 1-6)", "study")
    study_batches: int = _opt(8, "test batches of 256 for the per-layer activation error (0 = the whole test set)", "study")
    sweep_bits: str = _opt("8,6,4,3,2,1", "Core ML palettization widths of the bit-width sweep (some of 8,6,4,3,2,1)", "study")
    keep_float: str | None = _opt(None, "layers left float: auto:PP (fewest, most sensitive, until PTQ is within PP "
                                        "points of fp32), NAME,... or none. qat/export/run: they stay float in the "
                                        ".pte, .tflite and Core ML W8A8 (unset: none); study: its mixed-precision "
                                        "section (unset: auto:0.5)", "study")
    sparsity: float = _opt(0.75, "unstructured global magnitude pruning: fraction of conv/linear weights zeroed", "study")
    channel_ratio: float = _opt(0.5, "structured pruning (torch-pruning): fraction of channels removed per layer", "study")
    prune_epochs: float = _opt(1.0, "fine-tuning epochs of the gradual pruning schedule (fractions allowed)", "study")
    prune_steps: int = _opt(0, "cap on pruning fine-tuning steps (0 = no cap)", "study")
    prune_lr: float = _opt(5e-4, "pruning fine-tuning learning rate (Adam)", "study")
    # output
    out: str = _opt("artifacts", "output directory", "run")
    force: bool = _opt(False, "re-run stages even when OUT already holds their result", "run")

    def validate(self) -> "RunConfig":
        problems = type_problems(self)
        if problems:  # ranges make no sense on values of the wrong type
            raise ConfigError("; ".join(problems))
        self.nbits = number_or_word(self.nbits)  # "4" from a config file is the number 4
        for name, low in (("epochs", 0), ("qat_epochs", 0), ("limit_train", 0), ("limit_test", 0), ("threads", 0),
                          ("qat_max_steps", 0), ("seed", 0), ("max_acc_drop", 0), ("max_quant_drop", 0),
                          ("weight_threshold", 0), ("bench_warmup", 0), ("bench_train_steps", 1),
                          ("bench_iterations", 1), ("bench_seconds", 0), ("bench_train_seconds", 0), ("calib_batches", 1), ("sample_size", 1), ("group_size", 1),
                          ("study_batches", 0), ("prune_epochs", 0), ("prune_steps", 0), ("bn_recalibration", 0),
                          ("parity_images", 0), ("max_parity_steps", 0), ("max_parity_steps_float", 0),
                          ("max_local_steps", 0), ("near_tie_steps", 0)):
            if getattr(self, name) < low:
                problems.append(f"{_flag(name)} must be >= {low}, got {getattr(self, name)}")
        for name in ("sparsity", "channel_ratio"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{_flag(name)} is a fraction in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "qat_lr", "prune_lr"):
            if not getattr(self, name) > 0:
                problems.append(f"{_flag(name)} must be > 0, got {getattr(self, name)}")
        if isinstance(self.out, str) and not self.out.strip():
            problems.append(f"--out is empty ({self.out!r}): it would write into the current directory; name the "
                            "output folder, e.g. --out artifacts (for make: OUT=artifacts, not an empty OUT=)")
        if self.epochs == 0 and not self.weights and not self.pretrained:
            problems.append("--epochs 0 without --weights or --pretrained would keep the network's random initial "
                            "weights (a model at chance level); train at least 1 epoch, or start from --weights FILE "
                            "(or --pretrained for a torchvision:NAME model)")
        if self.batch_size < 2:
            problems.append(f"--batch-size must be >= 2 (QAT export needs a batch of 2), got {self.batch_size}")
        if self.image_size is not None and self.image_size < MIN_IMAGE_SIZE:
            problems.append(f"--image-size must be >= {MIN_IMAGE_SIZE} pixels, got {self.image_size}")
        if self.dynamic_batch and not DYNAMIC_BATCH_MIN <= self.dynamic_batch <= DYNAMIC_BATCH_MAX:
            problems.append(f"--dynamic-batch must be 0 (static batch 1) or between {DYNAMIC_BATCH_MIN} and "
                            f"{DYNAMIC_BATCH_MAX}, got {self.dynamic_batch}: XNNPACK's convolution shape guard needs "
                            f"an example batch of at least {DYNAMIC_BATCH_MIN}")
        for name in ("freeze_bn_at", "freeze_observers_at"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{_flag(name)} is a fraction in [0, 1], got {getattr(self, name)}")
        unknown = [b for b in self.backends.split(",") if b.strip() and b.strip() not in [*BACKENDS, "all", "none"]]
        if unknown:
            problems.append(f"unknown backend(s) {unknown} in --backends; choose from {', '.join(BACKENDS)}")
        for name in ("min_agreement", "rounding_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{_flag(name)} is a fraction in [0, 1], got {getattr(self, name)}")
        if not self.distill_temperature > 0:
            problems.append(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        if not 0.0 <= self.distill_weight <= 1.0:
            problems.append(f"--distill-weight is a fraction in [0, 1], got {self.distill_weight}")
        if not 0.5 <= self.confidence < 1.0:
            problems.append(f"--confidence is a level in [0.5, 1), e.g. 0.95, got {self.confidence}")
        problems += self._compute_problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def _compute_problems(self) -> list[str]:
        """Device, data loading and training-recipe settings."""
        problems = []
        for name, choices in (("device", DEVICES), ("loader", LOADERS), ("optimizer", OPTIMIZERS),
                              ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in choices:
                problems.append(f"unknown --{name.replace('_', '-')} {getattr(self, name)!r}; choose one of: {', '.join(choices)}")
        for name in ("workers", "stats_images", "warmup_epochs", "weight_decay"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.momentum < 1.0:
            problems.append(f"--momentum is in [0, 1), got {self.momentum}")
        if not 0.0 < self.lr_gamma <= 1.0:
            problems.append(f"--lr-gamma is in (0, 1], got {self.lr_gamma}")
        if not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"--label-smoothing is in [0, 1), got {self.label_smoothing}")
        if not 0.0 < self.augment_min_scale <= 1.0:
            problems.append(f"--augment-min-scale is in (0, 1], got {self.augment_min_scale}")
        return problems

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def key(self, *names: str) -> str:
        """Short hash of the named settings: equal keys mean a stage's result can be reused."""
        subset = {n: getattr(self, n) for n in sorted(names)}
        return hashlib.sha256(json.dumps(subset, sort_keys=True).encode()).hexdigest()[:16]


class ConfigError(BadInput, ValueError):
    """A setting is invalid; the message says which and what is allowed."""


FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def number_or_word(text) -> int | str:
    """A setting that takes a whole number or a word (--nbits 4 | auto:PP): a number stays an int, so a run with a
    number keeps the cache keys it always had."""
    text = str(text).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def field_kind(name: str) -> tuple[type, bool]:
    """(bool | int | float | str | number_or_word, whether None is allowed) for a RunConfig field."""
    text = str(FIELDS[name].type)
    if text.startswith("int | str"):
        return number_or_word, False
    kind = bool if text.startswith("bool") else int if text.startswith("int") else float if text.startswith("float") else str
    return kind, "None" in text


def type_problems(cfg: "RunConfig") -> list[str]:
    """Settings whose value has the wrong type, e.g. `epochs: three` in a config file."""
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text",
             number_or_word: "a whole number or text"}
    problems = []
    for name in FIELDS:
        value = getattr(cfg, name)
        kind, optional = field_kind(name)
        if value is None and optional:
            continue
        ok = (isinstance(value, bool) if kind is bool
              else isinstance(value, int) and not isinstance(value, bool) if kind is int
              else isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float
              else isinstance(value, (int, str)) and not isinstance(value, bool) if kind is number_or_word
              else isinstance(value, str))
        if not ok:
            problems.append(f"setting {name} ({_flag(name)}) must be {names[kind]}, got {value!r}")
    return problems


def load_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of setting: value")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ConfigError(f"config file {path}: unknown settings {unknown}; known: {sorted(FIELDS)}")
    return data


def resolve(file_values: dict | None = None, flag_values: dict | None = None) -> RunConfig:
    values = {**(file_values or {}), **(flag_values or {})}
    return RunConfig(**values).validate()
