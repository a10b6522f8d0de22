"""Quantization schemes as choices, and which runtime honours which.

A `Scheme` is one frozen value built from the settings (`--weight-bits`, `--weight-granularity`,
`--block-size`, `--weight-symmetry`, `--activations`, `--quant-mode`, `--calibration`). The
support matrix lives here as data and functions, next to the scheme, so the CLI's refusal, the
README's table (`mobile-pipeline schemes`) and the tests all read the same source.

Each runtime either honours a scheme (and says how: which quantizer, which kernels), or refuses it
with the reason. A scheme no runtime exports can still be simulated in PyTorch; the report says so.
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
BLOCK_SIZES_TFLITE = (32, 64, 128, 256)  # ai-edge-quantizer's blockwise granularities
RUNTIMES = ("executorch", "tflite", "coreml")
RUNTIME_NAMES = {"executorch": "ExecuTorch (XNNPACK)", "tflite": "TFLite (LiteRT)", "coreml": "Core ML"}


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


def support(scheme: Scheme, runtime: str) -> Support:
    """Does `runtime` export `scheme`, and through what? The single source of the support matrix."""
    s = scheme
    sym, bits, gran, acts = s.symmetry == "symmetric", s.weight_bits, s.granularity, s.activations
    if runtime == "executorch":
        if not sym:
            return Support(runtime, False, reason="XNNPACK's int8 kernels take symmetric weights only (zero point 0)")
        if bits == 8 and acts == "static" and gran != "per_block":
            return Support(runtime, True, "PT2E graph (XNNPACKQuantizer), lowered to XNNPACK int8 kernels")
        if bits == 8 and acts == "dynamic" and gran != "per_block":
            return Support(runtime, True, "PT2E graph with dynamic int8 activations (XNNPACKQuantizer is_dynamic): "
                                          "linear layers, and convolutions not followed by ReLU, run dynamically "
                                          "quantized; the rest stays fp32 inside XNNPACK")
        if bits == 4 and acts == "dynamic" and gran in ("per_block", "per_channel"):
            return Support(runtime, True, "torchao Int8DynamicActivationIntxWeightConfig (int4 weights, dynamic int8 "
                                          "activations) for linear layers, lowered to XNNPACK; convolutions stay fp32")
        if acts == "none":
            return Support(runtime, False, reason="no weight-only path: XNNPACK runs int8/int4 weights with "
                                                  "int8 activations (static or dynamic); use --activations dynamic")
        if bits == 4:
            return Support(runtime, False, reason="XNNPACK takes 4-bit weights only with dynamic int8 activations "
                                                  "(linear layers); use --activations dynamic")
        return Support(runtime, False, reason="XNNPACK has no per-block 8-bit weights; use per_channel or per_tensor")
    if runtime == "tflite":
        if not sym:
            return Support(runtime, False, reason="LiteRT's kernels take symmetric weights only (zero point 0)")
        if gran == "per_block" and acts == "none":
            return Support(runtime, False, reason="ai-edge-quantizer's weight-only recipes take per-channel or "
                                                  "per-tensor weights; blocks only with dynamic activations")
        if gran == "per_block" and bits == 8:
            return Support(runtime, False, reason="ai-edge-quantizer's policy takes blockwise weights at 4 bits only "
                                                  "(dynamic); use per_channel for 8 bits")
        if gran == "per_block" and s.block_size not in BLOCK_SIZES_TFLITE:
            return Support(runtime, False, reason=f"ai-edge-quantizer blocks are {BLOCK_SIZES_TFLITE}, "
                                                  f"not {s.block_size}")
        if bits == 8 and acts == "static" and gran != "per_block":
            return Support(runtime, True, "litert-torch converts the same PT2E graph: fully int8")
        if acts == "dynamic":
            return Support(runtime, True, f"ai-edge-quantizer dynamic int{bits} recipe for the linear layers "
                                          "(FULLY_CONNECTED, as XNNPACK's dynamic path), on the float .tflite of "
                                          "the same float weights; activations quantized at run time")
        if acts == "none":
            return Support(runtime, True, f"ai-edge-quantizer weight-only int{bits} recipe on the float .tflite: "
                                          "every conv/linear weight stored as integers, dequantized before float "
                                          "compute")
        return Support(runtime, False, reason="static int8 activations need 8-bit per-channel or per-tensor "
                                              "weights here")
    if runtime == "coreml":
        if acts == "dynamic":
            return Support(runtime, False, reason="Core ML has no dynamic activation quantization")
        if acts == "none":
            mode = "linear_symmetric" if sym else "linear"
            return Support(runtime, True, f"coremltools linear_quantize_weights (mode {mode}, int{bits}, "
                                          f"{gran}): every conv/linear weight stored as int{bits} + scale, "
                                          "compute in fp16")
        if bits == 8 and sym and gran != "per_block":
            return Support(runtime, True, "ct.convert of the same folded PT2E graph: int8 weights "
                                          "(constexpr_blockwise_shift_scale) and quantize/dequantize activations")
        return Support(runtime, False, reason="Core ML takes static int8 activations only from a symmetric 8-bit "
                                              "per-channel or per-tensor PT2E graph; for other weights use "
                                              "--activations none (weight-only)")
    raise SchemeError(f"unknown runtime {runtime!r}")


def check(scheme: Scheme, runtimes: list[str]) -> list[str]:
    """Everything wrong with `scheme` for the selected runtimes (empty list: it can run)."""
    problems = scheme.problems()
    if problems:
        return problems
    for runtime in runtimes:
        s = support(scheme, runtime)
        if not s.ok:
            problems.append(f"{RUNTIME_NAMES[runtime]} cannot export {scheme.summary()}: {s.reason}. "
                            f"Choose another scheme, or drop {runtime} from --backends")
    return problems


# ---- the matrix, for `mobile-pipeline schemes` and the README -----------------------------------
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


def matrix() -> list[dict]:
    rows = []
    for label, scheme in MATRIX_ROWS:
        refused = scheme.problems()
        cells = {r: (Support(r, False, reason=f"not offered: {refused[0]}") if refused else support(scheme, r))
                 for r in RUNTIMES}
        rows.append({"scheme": label, "tag": scheme.tag, "flags": flags_for(scheme),
                     "qat": scheme.trainable, **{r: asdict(c) for r, c in cells.items()},
                     "simulated_only": not refused and not any(c.ok for c in cells.values()),
                     "refused": bool(refused)})
    return rows


def flags_for(scheme: Scheme) -> str:
    default = Scheme()
    parts = [f"{FLAGS[f.name]} {getattr(scheme, f.name)}" for f in fields(Scheme)
             if getattr(scheme, f.name) != getattr(default, f.name) and f.name != "block_size"]
    if scheme.granularity == "per_block":
        parts.append(f"--block-size {scheme.block_size}")
    return " ".join(parts) or "(defaults)"


def matrix_markdown() -> str:
    head = "| scheme | flags | " + " | ".join(RUNTIME_NAMES[r] for r in RUNTIMES) + " | QAT |"
    lines = [head, "|" + "---|" * (len(RUNTIMES) + 3)]
    for row in matrix():
        cells = [("yes: " + row[r]["how"]) if row[r]["ok"] else ("no: " + row[r]["reason"]) for r in RUNTIMES]
        label = row["scheme"] + (" (simulated in PyTorch only)" if row["simulated_only"] else "")
        qat = "–" if row["refused"] else ("yes" if row["qat"] else "no (PTQ)")
        lines.append(f"| {label} | `{row['flags']}` | " + " | ".join(cells) + f" | {qat} |")
    lines += ["", "PTQ calibration of static activation ranges: `--calibration histogram` (default, XNNPACKQuantizer's own), "
              "`minmax`, `moving_average`, `percentile` (torchao observers; percentile clips the 0.01% tails). A scheme "
              "that no runtime exports is still quantized and measured in PyTorch, and labelled simulated."]
    return "\n".join(lines)
