"""Session: an ONNX model loaded in ONNX Runtime, with inputs checked before every run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgert.devices import DEVICE_PROVIDERS, fallback_to_cpu, resolve_device
from edgert.errors import EdgertError, InputError, ModelLoadError, first_line
from edgert.plan import MANIFEST_KEY, TOKENIZER_KEY, Manifest

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


def session_options(threads: int | None = None, *, spin: bool = True) -> ort.SessionOptions:
    """ONNX Runtime options: `threads` intra-op threads (None: ONNX Runtime's default);
    spin=False stops idle intra-op threads from busy-waiting (fairer when sessions alternate)."""
    options = ort.SessionOptions()
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads is not None:
        if threads < 1:
            raise EdgertError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def create_ort_session(path: Path, providers: list[str],
                       options: ort.SessionOptions) -> ort.InferenceSession:
    """Create an ONNX Runtime session, turning load failures into ModelLoadError."""
    if not path.exists():
        raise ModelLoadError(f"model not found: {path}")
    if not path.is_file():
        raise ModelLoadError(f"model path is not a file: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        return ort.InferenceSession(os.fspath(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types here
        raise ModelLoadError(f"cannot load {path} as an ONNX model: {first_line(exc)}") from None


class Session:
    """A loaded model. Use `edgert.load` to create one."""

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int | None = None,
                 strict: bool = False, options: ort.SessionOptions | None = None):
        self.path = Path(path)
        self.device, providers = resolve_device(device, strict=strict)
        self.threads = threads
        self._ort = create_ort_session(self.path, providers, options or session_options(threads))
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
            raise ModelLoadError(f"{self.path}: corrupt edgert manifest ({exc})") from None

    @property
    def providers(self) -> list[str]:
        return self._ort.get_providers()

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]

    def check_inputs(self, feeds: Mapping[str, object]) -> dict[str, np.ndarray]:
        """Return `feeds` as numpy arrays, or raise InputError naming the first mismatch."""
        if not isinstance(feeds, Mapping):
            raise InputError("inputs must be a mapping of input name to array")
        expected = {s.name: s for s in self.inputs}
        unknown = sorted(set(feeds) - set(expected))
        if unknown:
            raise InputError(f"unknown input {unknown[0]!r}; the model takes {', '.join(expected)}")
        missing = [n for n in expected if n not in feeds]
        if missing:
            raise InputError(f"missing input {missing[0]!r}; the model takes {', '.join(expected)}")
        arrays: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for name, spec in expected.items():
            array = np.asarray(feeds[name])
            if array.dtype != spec.dtype:
                raise InputError(f"input {name!r} must be {spec.dtype.name}, got {array.dtype.name}")
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
        return arrays

    def run(self, feeds: Mapping[str, object], output_names: Sequence[str] | None = None
            ) -> dict[str, np.ndarray]:
        """Check named inputs, run the model, return {output name: array}."""
        arrays = self.check_inputs(feeds)
        names = list(output_names) if output_names else self.output_names
        bad = [n for n in names if n not in self.output_names]
        if bad:
            raise InputError(f"unknown output {bad[0]!r}; the model has {', '.join(self.output_names)}")
        return dict(zip(names, self.run_unchecked(arrays, names)))

    def run_unchecked(self, arrays: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None
                      ) -> list[np.ndarray]:
        """Run without input checks (for timing loops whose inputs were checked once)."""
        try:
            return self._ort.run(list(output_names) if output_names else None, dict(arrays))
        except Exception as exc:  # a value ONNX Runtime rejects, e.g. an out-of-range token id
            raise InputError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from None

    @property
    def tokenizer(self):
        """The TextTokenizer stored in the model (raises EdgertError if there is none)."""
        if self._tokenizer is None:
            from edgert.text import TextTokenizer

            tokenizer_json = self.metadata.get(TOKENIZER_KEY)
            if tokenizer_json is None or self.manifest is None or not self.manifest.text:
                raise EdgertError(f"{self.path.name} carries no tokenizer; feed token ids instead")
            self._tokenizer = TextTokenizer(tokenizer_json,
                                            max_length=self.manifest.text["max_length"],
                                            input_roles=self.manifest.inputs)
        return self._tokenizer

    def run_text(self, texts: str | Sequence[str], output_names: Sequence[str] | None = None
                 ) -> dict[str, np.ndarray]:
        """Tokenize `texts` with the model's own tokenizer and run."""
        return self.run(self.tokenizer(texts), output_names)

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, device={self.device!r})"


def load(path: str | os.PathLike, device: str = "cpu", threads: int | None = None, *,
         strict: bool = False) -> Session:
    """Load an ONNX model for inference.

    device: cpu, cuda, tensorrt or auto (the fastest available). An unavailable device
    falls back to cpu with a warning, or raises DeviceUnavailableError when `strict`.
    threads: intra-op threads; None keeps ONNX Runtime's default (one per core).
    """
    return Session(path, device=device, threads=threads, strict=strict)
