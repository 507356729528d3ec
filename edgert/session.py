"""Session: an ONNX model loaded in ONNX Runtime, with inputs checked before every run.

Checks happen before ONNX Runtime sees anything, so a user mistake is one EdgertError
naming the limit: thread counts against the cores this process may use, input names,
dtypes and shapes against the signature, and (for models exported by edgert) sequence
length, token ids and attention masks against the manifest, and the memory one run needs
against the memory available. ONNX Runtime's own C++ log is silenced: its errors reach the
caller as exceptions.
"""

from __future__ import annotations

import math
import numbers
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgert import float_mode
from edgert._io import path_argument
from edgert.devices import DEVICE_PROVIDERS, fallback_to_cpu, resolve_device
from edgert.errors import EdgertError, InputError, ModelLoadError, OptionError, first_line, shown_path
from edgert.memory import available_memory_bytes, format_bytes
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, Manifest
from edgert.text import TextTokenizer

ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int16)": np.int16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}

# Dimension and input names written by the common exporters (torch.onnx, Optimum, edgert),
# used when the model carries no edgert manifest saying what its dims and inputs mean.
CONVENTIONAL_DIMS = {
    "batch": "batch", "batch_size": "batch", "N": "batch",
    "sequence": "sequence", "sequence_length": "sequence", "seq_len": "sequence",
    "seq": "sequence", "S": "sequence",
}
CONVENTIONAL_INPUTS = {
    "input_ids": "input_ids", "attention_mask": "attention_mask",
    "token_type_ids": "token_type_ids", "position_ids": "position_ids",
}

# More intra-op threads than cores only adds contention; up to this many per usable core
# are allowed (some users oversubscribe on purpose), beyond it a typo like 100000 would
# have ONNX Runtime create every thread before failing.
THREADS_PER_CORE = 2
# FATAL only: ONNX Runtime's errors reach the caller as exceptions, its warnings are noise.
ORT_LOG_SEVERITY = 4
# The memory estimate's activations: a transformer layer holds at least its input and its
# output hidden states [batch, sequence, hidden] at once (the residual connection), whatever
# its kernels fuse. A floor, not the peak: MiniLM's measured peak is 12-18x it (README).
HIDDEN_STATES_HELD = 2
# ONNX Runtime graph optimizers that edgert's sessions turn off, by name. SkipLayerNormFusion
# rewrites each residual Add + LayerNormalization into com.microsoft.SkipLayerNormalization,
# whose CPU kernel (ONNX Runtime 1.32, Xeon with AVX-512/AMX, 2 threads) is 3.2x slower than
# the ops it replaces on a [1, 128, 384] tensor; without it MiniLM (sequence 128, batch 1) runs
# 1.04x faster in FP32 and 1.13x in dynamic INT8 (bench/skip_layernorm_check.py, its section of
# bench/RESULTS.md). edgert export leaves those ops unfused for the same reason.
ORT_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
_ORT_DISABLED_OPTIMIZERS_KEY = "optimization.disable_specified_optimizers"  # ';'-separated names
# Flush-to-zero and denormals-are-zero in ONNX Runtime's threads. Decoders reach the float32
# denormal range (softmax over score gaps beyond ~87, tiny activations), where x86 arithmetic
# runs many times slower; only values below ~1.2e-38 change. ONNX Runtime applies the setting to
# its pool threads; edgert/float_mode.py sets it on the calling thread around each run only.
_ORT_DENORMAL_AS_ZERO_KEY = "session.set_denormal_as_zero"
_ORT_STATUS = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")

Dim = int | str | None  # static size, symbolic name, or unnamed dynamic


@dataclass(frozen=True)
class TensorSpec:
    """Name, numpy dtype and shape of a graph input or output."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    @classmethod
    def from_ort(cls, arg: ort.NodeArg) -> TensorSpec:
        if arg.type not in ORT_DTYPES:
            raise ModelLoadError(f"{arg.name}: unsupported tensor type {arg.type}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else (d or None) for d in (arg.shape or ()))
        return cls(arg.name, np.dtype(ORT_DTYPES[arg.type]), shape)

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype.name}[{dims}]"


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity where the OS has one, else os.cpu_count()."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(seconds: float = 0.05) -> float | None:
    """How many cores the machine kept busy (all processes) over the next `seconds`, from
    /proc/stat; None where there is no /proc/stat (not Linux)."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        busy0, total0 = sample()
        time.sleep(seconds)
        busy1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def check_threads(threads: object) -> int | None:
    """Return `threads` as an int (None stays None: ONNX Runtime's default), or raise
    EdgertError unless it is a whole number in 1..THREADS_PER_CORE x usable_cores()."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise OptionError(f"threads must be a whole number, got {_shown_value(threads)}")
    cores = usable_cores()
    limit = THREADS_PER_CORE * cores
    if not 1 <= threads <= limit:
        raise OptionError(f"threads must lie in 1..{limit} ({THREADS_PER_CORE} per core for the "
                          f"{cores} cores this process may use), got {threads}")
    return int(threads)


def quiet_onnxruntime() -> None:
    """Silence ONNX Runtime's process-wide default logger too (execution-provider loading
    logs there, not through a session). For command-line tools: it affects the whole process."""
    ort.set_default_logger_severity(ORT_LOG_SEVERITY)


def session_options(threads: int | None = None, *, spin: bool = True,
                    denormal_as_zero: bool = True) -> ort.SessionOptions:
    """ONNX Runtime options: `threads` intra-op threads (None: ONNX Runtime's default);
    spin=False stops idle intra-op threads from busy-waiting (fairer when sessions alternate);
    denormal_as_zero=False keeps float32 denormals (ONNX Runtime's default; edgert flushes them
    to zero, which is many times faster where a model reaches them). The graph optimizers in
    ORT_DISABLED_OPTIMIZERS are off, and ONNX Runtime's C++ log is silenced (its errors still raise)."""
    threads = check_threads(threads)
    for name, value in (("spin", spin), ("denormal_as_zero", denormal_as_zero)):
        if not isinstance(value, bool):
            raise OptionError(f"{name} must be True or False, got {_shown_value(value)}")
    options = ort.SessionOptions()
    options.log_severity_level = ORT_LOG_SEVERITY
    options.add_session_config_entry(_ORT_DISABLED_OPTIMIZERS_KEY, ";".join(ORT_DISABLED_OPTIMIZERS))
    if denormal_as_zero:
        options.add_session_config_entry(_ORT_DENORMAL_AS_ZERO_KEY, "1")
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def _config_entry(options: ort.SessionOptions, key: str) -> str | None:
    """A session config entry of `options`, None when it is not set (ONNX Runtime raises)."""
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:
        return None


def model_path(value: object) -> Path:
    """`value` as the Path of an existing, non-empty regular file, or ModelLoadError."""
    path = path_argument(value, "model path", ModelLoadError)
    try:
        if not path.exists():
            raise ModelLoadError(f"model not found: {shown_path(path)}")
        if not path.is_file():
            raise ModelLoadError(f"model path is not a file: {shown_path(path)}")
        if path.stat().st_size == 0:
            raise ModelLoadError(f"model file is empty: {shown_path(path)}")
    except OSError as exc:  # name too long, permission denied on a parent, ...
        raise ModelLoadError(f"cannot read model {shown_path(path)}: {exc.strerror or exc}") from None
    return path


def create_ort_session(path: Path, providers: list[str],
                       options: ort.SessionOptions) -> ort.InferenceSession:
    """Create an ONNX Runtime session for a path model_path() accepted, turning load failures
    into ModelLoadError."""
    try:
        with float_mode.kept():  # the first session of a process would change this thread's mode
            return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise ModelLoadError(f"cannot load {shown_path(path)} as an ONNX model: "
                             f"{ort_message(exc)}") from None


def ort_message(exc: BaseException) -> str:
    """The first line of an ONNX Runtime exception without its `[ONNXRuntimeError] : 2 : CODE :` prefix."""
    return _ORT_STATUS.sub("", first_line(exc))


def _shown_value(value: object) -> str:
    """A short one-line description of a value a user passed by mistake."""
    if isinstance(value, (str, bytes, bool, numbers.Number)) and len(repr(value)) <= 40:
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def _dtype_label(dtype: np.dtype) -> str:
    return {"U": "str", "S": "bytes", "O": "object", "V": "void"}.get(dtype.kind, dtype.name)


class Session:
    """A loaded model. Use `edgert.load` to create one.

    `options` replaces session_options(threads) whole: build it with session_options() to
    keep edgert's settings (such as the optimizers ORT_DISABLED_OPTIMIZERS turns off)."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None,
                 strict: bool = False, options: ort.SessionOptions | None = None):
        threads = check_threads(threads)
        if options is not None and not isinstance(options, ort.SessionOptions):
            raise OptionError(f"options must be an onnxruntime.SessionOptions, got {type(options).__name__}")
        if options is not None and threads is not None:
            raise OptionError("give threads or options, not both (set intra_op_num_threads in the options)")
        if not isinstance(strict, bool):
            raise OptionError(f"strict must be True or False, got {_shown_value(strict)}")
        self.path = model_path(path)
        self.device, providers = resolve_device(device, strict=strict)
        self.threads = threads
        options = options or session_options(threads)
        self._flush_denormals = _config_entry(options, _ORT_DENORMAL_AS_ZERO_KEY) == "1"
        self._ort = create_ort_session(self.path, providers, options)
        wanted = DEVICE_PROVIDERS[self.device][0]
        if wanted not in self._ort.get_providers():
            fallback_to_cpu(self.device, f"{wanted} failed to initialise", strict=strict)
            self.device = "cpu"
        self.inputs = [TensorSpec.from_ort(a) for a in self._ort.get_inputs()]
        self.outputs = [TensorSpec.from_ort(a) for a in self._ort.get_outputs()]
        self.metadata = dict(self._ort.get_modelmeta().custom_metadata_map)
        self.manifest = self._read_manifest()
        self._tokenizer = None

    def _read_manifest(self) -> Manifest | None:
        text = self.metadata.get(MANIFEST_KEY)
        if text is None:
            return None
        try:
            return Manifest.from_json(text)
        except (ValueError, TypeError, EdgertError) as exc:
            raise ModelLoadError(f"{shown_path(self.path)}: corrupt edgert manifest "
                                 f"({first_line(exc)})") from None

    @property
    def providers(self) -> list[str]:
        return self._ort.get_providers()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def input_role(self, name: str) -> str | None:
        """What input `name` holds (input_ids, attention_mask, token_type_ids, position_ids):
        from the manifest, else from the conventional input names; None if unknown."""
        roles = self.manifest.inputs if self.manifest else {}
        return roles.get(name) or CONVENTIONAL_INPUTS.get(name)

    def dim_role(self, dim: Dim) -> str | None:
        """What a symbolic dimension means (batch, sequence): from the manifest, else from
        the conventional dimension names; None if unknown."""
        if not isinstance(dim, str):
            return None
        roles = self.manifest.dims if self.manifest else {}
        return roles.get(dim) or CONVENTIONAL_DIMS.get(dim)

    @property
    def max_length(self) -> int | None:
        """The longest sequence the model takes (manifest text.max_length, or decoder.max_length
        for a decoder without a tokenizer), None if unknown."""
        return self._manifest_limit("max_length")

    @property
    def vocab_size(self) -> int | None:
        """Token ids must lie in [0, vocab_size) (manifest text.vocab_size or decoder.vocab_size),
        None if unknown."""
        return self._manifest_limit("vocab_size")

    def _manifest_limit(self, name: str) -> int | None:
        if self.manifest is None:
            return None
        return (self.manifest.text or {}).get(name) or (self.manifest.decoder or {}).get(name)

    def check_inputs(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Return `feeds` as numpy arrays, or raise InputError naming the first mismatch:
        names, dtypes, ranks, static dims, one size per symbolic dim, then the limits
        (check_shapes) and, for models with a manifest, token ids and attention masks."""
        if not isinstance(feeds, Mapping):
            raise InputError(f"inputs must be a mapping of input name to array, got {type(feeds).__name__}")
        expected = {s.name: s for s in self.inputs}
        unknown = sorted((k for k in feeds if k not in expected), key=repr)
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model takes {', '.join(expected)}")
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the model takes {', '.join(expected)}")
        arrays: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for name, spec in expected.items():
            array = _as_array(name, feeds[name])
            if array.dtype != spec.dtype:
                raise InputError(f"input {name!r} must be {spec.dtype.name}, got {_dtype_label(array.dtype)}")
            if array.ndim != len(spec.shape):
                raise InputError(f"input {name!r} must have rank {len(spec.shape)} "
                                 f"({spec.describe()}), got shape {array.shape}")
            for axis, (dim, size) in enumerate(zip(spec.shape, array.shape)):
                if isinstance(dim, int) and dim != size:
                    raise InputError(f"input {name!r} axis {axis} must be {dim}, got {size} "
                                     f"(shape {array.shape})")
                if isinstance(dim, str):
                    seen = symbols.setdefault(dim, (size, name))
                    if seen[0] != size:
                        raise InputError(f"dimension {dim!r} is {seen[0]} in input {seen[1]!r} "
                                         f"but {size} in input {name!r}")
            arrays[name] = np.ascontiguousarray(array)
        self.check_shapes({name: a.shape for name, a in arrays.items()})
        for name, array in arrays.items():
            self._check_values(name, array)
        return arrays

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]], *, allocating: bool = False) -> None:
        """Raise InputError if inputs of these shapes break a limit known before running:
        an empty batch or sequence axis, a sequence longer than the manifest's max_length,
        or more memory than is available (estimate_run_bytes; with `allocating` the inputs
        themselves still have to be allocated and count too)."""
        limit = self.max_length
        for spec in self.inputs:
            shape = shapes.get(spec.name, ())
            for axis, (dim, size) in enumerate(zip(spec.shape, shape)):
                role = self.dim_role(dim)
                if role in ("batch", "sequence") and size < 1:
                    raise InputError(f"input {spec.name!r} has an empty {role} axis (axis {axis}, "
                                     f"shape {tuple(shape)}); give at least one "
                                     + ("example" if role == "batch" else "token"))
                if role == "sequence" and limit is not None and size > limit:
                    raise InputError(f"sequence length {size} (input {spec.name!r} axis {axis}) is "
                                     f"longer than the model's max_length {limit}")
                if role == "past_sequence" and limit is not None and size > limit:
                    raise InputError(f"past length {size} (input {spec.name!r} axis {axis}) is "
                                     f"longer than the model's max_length {limit}")
        available = available_memory_bytes()
        if available is None:
            return
        inputs = sum(math.prod(shapes.get(s.name, ())) * s.dtype.itemsize for s in self.inputs)
        outputs, activations = self.estimate_run_bytes(shapes)
        needed = outputs + activations + (inputs if allocating else 0)
        if needed > available:
            parts = ([f"inputs {format_bytes(inputs)}"] if allocating else []) + [
                f"outputs {format_bytes(outputs)}", f"activations at least {format_bytes(activations)}"]
            raise InputError(f"{self._shape_words(shapes)} needs about {format_bytes(needed)} "
                             f"({', '.join(parts)}), more than the {format_bytes(available)} of memory "
                             "available; use a smaller batch or shorter sequences")

    def estimate_run_bytes(self, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, int]:
        """(output bytes, activation bytes) one run on inputs of these shapes needs, at least.

        Outputs: every output whose dims are static or shared with the inputs. Activations
        (models with a manifest plan that records head_dim): HIDDEN_STATES_HELD hidden
        states [batch, sequence, heads x head_dim] in float32. A floor, so it never refuses
        a run that would fit; it exists to stop absurd batches before ONNX Runtime takes
        the machine's memory.
        """
        sizes: dict[str, int] = {}
        for spec in self.inputs:
            for dim, size in zip(spec.shape, shapes.get(spec.name, ())):
                if isinstance(dim, str):
                    sizes[dim] = size
        outputs = 0
        for spec in self.outputs:
            dims = [d if isinstance(d, int) else sizes.get(d) if isinstance(d, str) else None
                    for d in spec.shape]
            if None not in dims:
                outputs += math.prod(dims) * spec.dtype.itemsize
        by_role = {self.dim_role(dim): size for dim, size in sizes.items()}
        plan = self.manifest.plan if self.manifest else None
        activations = 0
        if plan is not None and plan.head_dim and "sequence" in by_role:
            hidden = max(layer.num_heads for layer in plan.layers) * plan.head_dim
            activations = HIDDEN_STATES_HELD * by_role.get("batch", 1) * by_role["sequence"] * hidden * 4
        return outputs, activations

    def _shape_words(self, shapes: Mapping[str, tuple[int, ...]]) -> str:
        """`batch 8 x sequence 128`, or the input shapes when the dims have no known roles."""
        roles: dict[str, int] = {}
        for spec in self.inputs:
            for dim, size in zip(spec.shape, shapes.get(spec.name, ())):
                role = self.dim_role(dim)
                if role in ("batch", "sequence"):
                    roles.setdefault(role, size)
        if roles:
            return " x ".join(f"{role} {size}" for role, size in sorted(roles.items()))
        return "inputs of shapes " + ", ".join(str(tuple(s)) for s in shapes.values())

    def _check_values(self, name: str, array: np.ndarray) -> None:
        """For models with a manifest: token ids in [0, vocab_size), positions in [0, max_length)
        and attention masks of 0 and 1."""
        if self.manifest is None or array.size == 0 or array.dtype.kind not in "iu":
            return
        role = self.input_role(name)
        bounds = {"input_ids": ("token id ", "ids", self.vocab_size, "vocab_size"),
                  "position_ids": ("position ", "positions", self.max_length, "max_length")}
        if role in bounds and bounds[role][2] is not None:
            what, plural, limit, field = bounds[role]
            bad = (array < 0) | (array >= limit)
            rule = f"{plural} must lie in [0, {limit}) (the model's {field})"
        elif role == "attention_mask":
            what, bad, rule = "", (array != 0) & (array != 1), "an attention mask holds 1 for a token and 0 for padding"
        else:
            return
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise InputError(f"input {name!r} holds {what}{array[where]} at {list(where)}; {rule}")

    def _output_names(self, output_names: object) -> list[str]:
        if output_names is None:
            return self.output_names
        if isinstance(output_names, (str, bytes)):
            raise InputError(f"output_names must be a list of names, not the string {output_names!r}; "
                             f"e.g. [{output_names!r}]")
        if not isinstance(output_names, Sequence):
            raise InputError("output_names must be a list of output names, "
                             f"got {type(output_names).__name__}")
        if not output_names:
            raise InputError("output_names is empty; give None for every output")
        bad = [n for n in output_names if not isinstance(n, str) or n not in self.output_names]
        if bad:
            shown = repr(bad[0]) if isinstance(bad[0], str) else _shown_value(bad[0])
            raise InputError(f"unknown output {shown}; the model has {', '.join(self.output_names)}")
        return list(output_names)

    def run(self, feeds: Mapping[str, object], output_names: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Check named inputs, run the model, return {output name: array}."""
        arrays = self.check_inputs(feeds)
        names = self._output_names(output_names)
        return dict(zip(names, self.run_unchecked(arrays, names)))

    def run_unchecked(self, arrays: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
                      ) -> list[np.ndarray]:
        """Run without input checks (for timing loops whose inputs were checked once)."""
        try:
            with float_mode.denormals_flushed(self._flush_denormals):
                return self._ort.run(list(output_names) if output_names else None, dict(arrays))
        except Exception as exc:  # a value ONNX Runtime rejects that no check above knew of
            raise InputError(f"ONNX Runtime rejected the inputs: {ort_message(exc)}") from None

    @property
    def tokenizer(self):
        """The TextTokenizer stored in the model (raises InputError if there is none)."""
        if self._tokenizer is None:
            tokenizer_json = self.metadata.get(TOKENIZER_KEY)
            if tokenizer_json is None or self.max_length is None:
                raise InputError(f"{shown_path(self.path.name)} carries no tokenizer; feed token ids instead")
            self._tokenizer = TextTokenizer(tokenizer_json, max_length=self.max_length,
                                            input_roles=self.manifest.inputs)
        return self._tokenizer

    def run_text(self, texts: str | Sequence[str], output_names: Sequence[str] | None = None
                 ) -> dict[str, np.ndarray]:
        """Tokenize `texts` (a string or a list of strings) with the model's own tokenizer and run."""
        return self.run(self.tokenizer(texts), output_names)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, device={self.device!r})"


def _as_array(name: str, value: object) -> np.ndarray:
    """`value` as a numpy array, or InputError for what numpy cannot make one of."""
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:  # ragged nested lists, odd objects
        raise InputError(f"input {name!r} is not a rectangular array: {first_line(exc)}") from None


def load(path: str | os.PathLike, device: str = "cpu", threads: int | None = None, *,
         strict: bool = False, options: ort.SessionOptions | None = None) -> Session:
    """Load an ONNX model for inference.

    device: cpu, cuda, tensorrt or auto (the fastest available). An unavailable device
    falls back to cpu with a warning, or raises DeviceUnavailableError when `strict`.
    threads: intra-op threads, 1 to 2 per core this process may use; None keeps ONNX
    Runtime's default (one per physical core). options: ONNX Runtime options instead of
    threads, e.g. session_options(2, denormal_as_zero=False) to keep float32 denormals.
    """
    return Session(path, device=device, threads=threads, strict=strict, options=options)
