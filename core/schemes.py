"""Quantization schemes as choices, with what holds whatever the runtime.

A `Scheme` is one frozen value built from the settings (`--weight-bits`, `--weight-granularity`,
`--block-size`, `--weight-symmetry`, `--activations`, `--quant-mode`, `--calibration`). Which
runtime honours which scheme is each backend's own fact (`Converter.support`, converters/); the
support matrix over them is converters/support.py, which the CLI's refusal, the scheme table of
the docs (`mobile-pipeline schemes`) and the tests all read. A scheme no runtime exports can still
be simulated in PyTorch; the report says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import BadInput

WEIGHT_BITS = (8, 4)
GRANULARITIES = ("per_channel", "per_tensor", "per_block")
SYMMETRIES = ("symmetric", "asymmetric")
ACTIVATIONS = ("static", "dynamic", "none")
MODES = ("auto", "qat", "ptq")
CALIBRATIONS = ("histogram", "minmax", "moving_average", "percentile")


class SchemeError(BadInput, ValueError):
    """A scheme setting is unknown, or a selected runtime cannot honour the scheme; the message says which and why."""


@dataclass(frozen=True)
class Scheme:
    weight_bits: int = 8
    granularity: str = "per_channel"
    block_size: int = 32
    symmetry: str = "symmetric"
    activations: str = "static"  # static | dynamic | none (weight-only)
    mode: str = "auto"  # auto | qat | ptq
    calibration: str = "histogram"  # PTQ activation ranges (static activations only)

    @classmethod
    def from_config(cls, cfg) -> "Scheme":
        return cls(cfg.weight_bits, cfg.weight_granularity, cfg.block_size, cfg.weight_symmetry,
                   cfg.activations, cfg.quant_mode, cfg.calibration)

    @classmethod
    def from_dict(cls, recorded: dict) -> "Scheme":
        """The scheme a manifest recorded (`describe()`): its derived entries (tag, summary) and unset ones left out."""
        return cls(**{k: v for k, v in recorded.items() if k in cls.__dataclass_fields__ and v is not None})

    def problems(self) -> list[str]:
        """Values out of range, and combinations that mean nothing anywhere."""
        out = []
        for name, allowed in (("weight_bits", WEIGHT_BITS), ("granularity", GRANULARITIES), ("symmetry", SYMMETRIES),
                              ("activations", ACTIVATIONS), ("mode", MODES), ("calibration", CALIBRATIONS)):
            if getattr(self, name) not in allowed:
                out.append(f"{FLAGS[name]} {getattr(self, name)!r}: choose one of {', '.join(map(str, allowed))}")
        if self.granularity == "per_block" and self.block_size < 2:
            out.append(f"--block-size must be >= 2, got {self.block_size}")
        if self.symmetry == "asymmetric" and self.activations == "static":
            out.append("asymmetric weights with static int8 activations are not offered: the int8 kernels of "
                       "XNNPACK and LiteRT take symmetric weights only, and torchao 0.18's PT2E quantizer accepts "
                       "only symmetric weight specs, so it cannot even be simulated here; use --activations none "
                       "(weight-only, Core ML) or dynamic (simulated in PyTorch)")
        if self.granularity == "per_block" and self.activations == "static":
            out.append("per-block weights are offered with --activations dynamic or none (weight-only): the static "
                       "int8 quantizers here take one scale per tensor or per output channel")
        if self.mode == "qat" and not self.trainable:
            out.append(f"--quant-mode qat: {self.summary()} is post-training only here (QAT runs on PT2E graphs "
                       "with static activations); use --quant-mode ptq or auto")
        return out

    # ---- names --------------------------------------------------------------------------------
    @property
    def is_default(self) -> bool:
        return self.weights_tag == "w8" and self.activations == "static" and self.granularity == "per_channel"

    @property
    def weights_tag(self) -> str:
        return f"w{self.weight_bits}" + ("a" if self.symmetry == "asymmetric" else "")

    @property
    def tag(self) -> str:
        """Short, file-name-safe name: `int8` for the default (w8 symmetric per-channel, static int8 activations)."""
        if self.is_default:
            base = "int8"
        else:
            gran = {"per_channel": "pc", "per_tensor": "pt", "per_block": f"b{self.block_size}"}[self.granularity]
            acts = {"static": "a8", "dynamic": "dyn", "none": "wo"}[self.activations]
            base = f"{self.weights_tag}{gran}{acts}"
        if self.mode != "auto":
            base += f"-{self.mode}"
        if self.activations == "static" and self.calibration != "histogram" and self.mode != "qat":
            base += f"-{self.calibration}"
        return base

    def summary(self) -> str:
        gran = {"per_channel": "per output channel", "per_tensor": "per tensor",
                "per_block": f"per block of {self.block_size}"}[self.granularity]
        acts = {"static": "int8 activations, static ranges", "dynamic": "int8 activations, dynamic ranges",
                "none": "float activations (weight-only)"}[self.activations]
        return f"int{self.weight_bits} weights, {self.symmetry}, {gran}; {acts}"

    def describe(self) -> dict:
        """Every choice spelled out, for the manifest and the report."""
        return {**asdict(self), "tag": self.tag, "summary": self.summary(),
                "calibration": self.calibration if self.activations == "static" else None}

    @property
    def pt2e(self) -> bool:
        """Is the quantized reference a PT2E graph (an XNNPACKQuantizer config)? Static activations at any
        width (4-bit weights are simulated there), or dynamic activations with 8-bit weights."""
        if self.granularity == "per_block" or self.symmetry == "asymmetric":  # PT2E takes symmetric weight specs only
            return False
        return self.activations == "static" or (self.activations == "dynamic" and self.weight_bits == 8)

    @property
    def trainable(self) -> bool:
        """Can this scheme be fine-tuned with fake quantization (PT2E QAT) here? Static activations only:
        with dynamic ones, torchao 0.18's convert_pt2e fails after QAT's train/eval graph switch
        ("No chose qparams node found", its PortNodeMetaForQDQ pass), so dynamic schemes are PTQ."""
        return self.pt2e and self.activations == "static"


FLAGS = {"weight_bits": "--weight-bits", "granularity": "--weight-granularity", "block_size": "--block-size",
         "symmetry": "--weight-symmetry", "activations": "--activations", "mode": "--quant-mode",
         "calibration": "--calibration"}


@dataclass(frozen=True)
class Support:
    """How one runtime handles one scheme: `how` when it does, `reason` when it does not."""

    runtime: str
    ok: bool
    how: str = ""
    reason: str = ""


# ---- the rows of the support matrix (converters/support.py) ------------------------------------
MATRIX_ROWS = [
    ("int8 weights, symmetric, per channel; static int8 activations (default)", Scheme()),
    ("int8 weights, symmetric, per tensor; static activations", Scheme(granularity="per_tensor")),
    ("int8 weights, asymmetric; static activations", Scheme(symmetry="asymmetric")),
    ("int8 weights, asymmetric, per channel; dynamic activations", Scheme(symmetry="asymmetric", activations="dynamic")),
    ("int8 weights, per channel; dynamic activations", Scheme(activations="dynamic")),
    ("int8 weights, per channel; weight-only", Scheme(activations="none")),
    ("int8 weights, asymmetric; weight-only", Scheme(activations="none", symmetry="asymmetric")),
    ("int4 weights, per block 32; dynamic activations", Scheme(4, "per_block", activations="dynamic")),
    ("int4 weights, per channel; dynamic activations", Scheme(4, "per_channel", activations="dynamic")),
    ("int4 weights, per block 32; weight-only", Scheme(4, "per_block", activations="none")),
    ("int4 weights, per channel; weight-only", Scheme(4, "per_channel", activations="none")),
    ("int8 weights, per block 32; dynamic activations", Scheme(8, "per_block", activations="dynamic")),
    ("int4 weights, asymmetric, per block 32; weight-only", Scheme(4, "per_block", symmetry="asymmetric", activations="none")),
    ("int4 weights, per channel; static activations", Scheme(4, "per_channel")),
]


def flags_for(scheme: Scheme) -> str:
    default = Scheme()
    parts = [f"{FLAGS[f.name]} {getattr(scheme, f.name)}" for f in fields(Scheme)
             if getattr(scheme, f.name) != getattr(default, f.name) and f.name != "block_size"]
    if scheme.granularity == "per_block":
        parts.append(f"--block-size {scheme.block_size}")
    return " ".join(parts) or "(defaults)"
