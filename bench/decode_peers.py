"""Decode peers for edgert's LLM benchmark: ONNX Runtime GenAI (fp32 and int4, CPU) and
transformers with its KV cache, each measured in a fresh subprocess per (peer, context) so the
peak RSS is that peer's own.

    .venv/bin/python bench/decode_peers.py --tiny --context 64 --new-tokens 8
    .venv/bin/python bench/decode_peers.py --context 1024 --new-tokens 16 [--peers transformers ...]

Python API (from a script in bench/ that has bench/ on sys.path):

    measure_peer(peer, model_dir, context, new_tokens, threads=2, *, spin=False) -> dict
        prefill_s       time to first token: the prompt's forward pass and the first greedy pick
        decode_ms       one latency per later token (new_tokens - 1 entries), in ms
        kv_bytes        bytes of the KV cache at the end (see the child functions for how)
        peak_rss_bytes  the child's peak resident set (VmHWM), interpreter and imports included
        tokens          the new_tokens greedy token ids
        plus peer, context, new_tokens, threads, spin, load_s (model load), rss_loaded_bytes
        (after load and a short warm-up), kv_note (how kv_bytes was found), versions

Every peer sees the same prompt (`prompt_ids`: C ids drawn with a fixed seed from [3, vocab))
and decodes greedily with end-of-sequence suppressed until new_tokens are made (GenAI's
min_length; transformers masks the same ids), so token lists are comparable one to one.

ONNX Runtime GenAI runs in its own virtual environment, bench/.venv-genai, created on first
use (`ensure_genai_venv`); its models are built by its model builder (`build_genai_model`) and
cached under bench/_work/decode/genai. The children import only their own runtime: this file
imports nothing outside the standard library at module level, so the GenAI venv can run it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "decode"
GENAI_VENV = HERE / ".venv-genai"
# Written once pip has finished, so an interrupted install is redone rather than trusted.
GENAI_READY = GENAI_VENV / ".installed"
# torch is pinned: that release is a CPU build on local disk; an unpinned torch pulls CUDA.
GENAI_REQUIREMENTS = ["onnxruntime-genai==0.18.0", "onnx-ir", "onnxscript", "transformers",
                      "torch==2.13.0"]
GENAI_PRECISIONS = ("fp32", "int4")
# GenAI peers: label -> (precision, denormals flushed to zero). GenAI ships with denormals kept
# (ONNX Runtime's default); "-ftz" sets session.set_denormal_as_zero as edgert does by default.
GENAI_PEERS = {"ort-genai-fp32": ("fp32", False), "ort-genai-fp32-ftz": ("fp32", True),
               "ort-genai-int4": ("int4", False)}
PEERS = (*GENAI_PEERS, "transformers")
PROMPT_SEED = 0
FIRST_ORDINARY_ID = 3  # ids 0-2 are <unk>, <s>, </s> in bench/decode_model.py's tokenizer
# A short untimed generation first, so one-time costs (thread pools, lazy kernel set-up) do
# not land in the measured time to first token.
WARMUP_PROMPT, WARMUP_NEW = 8, 2


class PeerError(RuntimeError):
    """A peer could not be installed, built or measured; the message says why."""


# ---------------------------------------------------------------- parent side

def _console():
    from rich.console import Console

    return Console(stderr=True)


def ensure_genai_venv() -> Path | None:
    """The python of bench/.venv-genai (onnxruntime-genai 0.18 and its model builder's needs),
    created on first use; None, with the reason printed, if it cannot be installed."""
    python = GENAI_VENV / "bin" / "python"
    if GENAI_READY.exists() and python.exists():
        return python
    console = _console()
    console.print("[bold]creating bench/.venv-genai[/] (onnxruntime-genai 0.18, its model builder, "
                  "torch 2.13 CPU) …")
    shutil.rmtree(GENAI_VENV, ignore_errors=True)
    start = time.perf_counter()
    try:
        subprocess.run([sys.executable, "-m", "venv", str(GENAI_VENV)], check=True,
                       capture_output=True, text=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *GENAI_REQUIREMENTS], check=True,
                       capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        reason = _last_lines(exc.stderr or exc.stdout or str(exc), 3)
        console.print(f"[red]ONNX Runtime GenAI did not install; it is left out of the comparison:[/] "
                      f"{reason}")
        shutil.rmtree(GENAI_VENV, ignore_errors=True)
        return None
    GENAI_READY.write_text(" ".join(GENAI_REQUIREMENTS) + "\n")
    console.print(f"bench/.venv-genai ready in {time.perf_counter() - start:.0f} s")
    return python


def genai_model_dir(model_dir: Path, precision: str) -> Path:
    """Where build_genai_model caches the GenAI build of `model_dir` at `precision`."""
    source = Path(model_dir).resolve()
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:8]
    return WORK / "genai" / f"{source.name}-{digest}-{precision}"


def build_genai_model(model_dir: Path, out_dir: Path, precision: str) -> Path:
    """Build `model_dir` (a Hugging Face Llama directory with a tokenizer) for ONNX Runtime
    GenAI on CPU at `precision` ("fp32" or "int4") into `out_dir`, unless already there.

    The builder is run as `python -m onnxruntime_genai.models.builder -i DIR -o OUT -p PREC -e cpu
    --extra_options prune_lm_head=true` in bench/.venv-genai (the last hidden state alone goes
    through the LM head, as in the other peers). It writes the model into a temporary folder
    that is renamed to `out_dir` only when the build and its checks succeeded.
    """
    from decode_model import atomic_directory

    if precision not in GENAI_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(GENAI_PRECISIONS)}, got {precision!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if (out_dir / "genai_config.json").is_file():
        return out_dir
    python = ensure_genai_venv()
    if python is None:
        raise PeerError("ONNX Runtime GenAI is not installed (bench/.venv-genai could not be created)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(out_dir) as tmp, tempfile.TemporaryDirectory(dir=out_dir.parent) as cache:
        command = [str(python), "-m", "onnxruntime_genai.models.builder", "-i", str(model_dir),
                   "-o", str(tmp), "-p", precision, "-e", "cpu", "-c", cache,
                   "--extra_options", "prune_lm_head=true"]
        result = subprocess.run(command, check=False, capture_output=True, text=True, env=_child_env(1))
        if result.returncode != 0:
            raise PeerError(f"the GenAI model builder failed on {model_dir} ({precision}): "
                            f"{_last_lines(result.stderr or result.stdout, 1)}")
        _check_context_window(tmp, model_dir)
    return out_dir


def _check_context_window(genai_dir: Path, model_dir: Path) -> None:
    """The builder sizes the rotary caches and genai_config's context_length and search.max_length
    from max_position_embeddings; make sure all three cover it (they cannot be raised after the
    build: the cos/sin tables in the graph are that long)."""
    wanted = json.loads((model_dir / "config.json").read_text())["max_position_embeddings"]
    config = json.loads((genai_dir / "genai_config.json").read_text())
    have = (config["model"]["context_length"], config["search"]["max_length"])
    if min(have) < wanted:
        raise PeerError(f"the GenAI build of {model_dir} allows {min(have)} tokens, not the "
                        f"{wanted} of max_position_embeddings")


def prompt_ids(context: int, vocab_size: int, seed: int = PROMPT_SEED) -> list[int]:
    """The benchmark prompt: `context` token ids drawn uniformly from [3, vocab_size) with `seed`
    (a longer prompt starts with every shorter one)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(FIRST_ORDINARY_ID, vocab_size, size=context).tolist()


def measure_peer(peer: str, model_dir: Path, context: int, new_tokens: int, threads: int = 2,
                 *, spin: bool = False) -> dict:
    """Measure one peer on one context length in a fresh subprocess (see the module docstring
    for the returned fields). GenAI peers build their model first if it is not cached.

    Idle worker threads wait passively (OMP_WAIT_POLICY=PASSIVE; for GenAI, ONNX Runtime's
    session.intra_op.allow_spinning=0) unless `spin`, which lets GenAI's threads spin as ONNX
    Runtime does by default (OpenMP stays passive)."""
    if peer not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {peer!r}")
    model_dir = Path(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    limit = config["max_position_embeddings"]
    if context < 1 or new_tokens < 1 or context + new_tokens > limit:
        raise ValueError(f"context ({context}) and new_tokens ({new_tokens}) must be >= 1 and sum to "
                         f"at most max_position_embeddings ({limit})")
    if not 1 <= threads <= 256:
        raise ValueError(f"threads must be between 1 and 256, got {threads}")
    if peer == "transformers":
        python, path = _transformers_python(), model_dir
    else:
        precision = GENAI_PEERS[peer][0]
        path = build_genai_model(model_dir, genai_model_dir(model_dir, precision), precision)
        python = ensure_genai_venv()
        if python is None:
            raise PeerError("ONNX Runtime GenAI is not installed (bench/.venv-genai could not be created)")
    eos = config["eos_token_id"]
    job = {"peer": peer, "model": str(path), "prompt": prompt_ids(context, config["vocab_size"]),
           "new_tokens": new_tokens, "threads": threads, "spin": spin,
           "denormal_as_zero": GENAI_PEERS.get(peer, (None, False))[1],
           "suppress_ids": eos if isinstance(eos, list) else [eos]}
    result = subprocess.run([str(python), str(Path(__file__).resolve()), "--child"],
                            input=json.dumps(job), check=False, capture_output=True, text=True,
                            env=_child_env(threads))
    if result.returncode != 0:
        raise PeerError(f"{peer} at context {context} failed: "
                        f"{_last_lines(result.stderr or result.stdout, 3)}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _transformers_python() -> Path:
    """This interpreter when it has transformers and torch (edgert's [export] extra), else the
    GenAI venv's, which has both."""
    import importlib.util

    if importlib.util.find_spec("transformers") and importlib.util.find_spec("torch"):
        return Path(sys.executable)
    python = ensure_genai_venv()
    if python is None:
        raise PeerError("transformers is not installed here and bench/.venv-genai could not be created")
    return python


def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    # Idle OpenMP workers must sleep, not spin: two cores are shared with whatever runs next.
    env.update(OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false",
               TRANSFORMERS_VERBOSITY="error", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return env


def _last_lines(text: str, count: int) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "no output"


# ---------------------------------------------------------------- child side

def _child_main() -> None:
    """Run the one measurement described by the JSON job on stdin; print its JSON as the last line."""
    job = json.loads(sys.stdin.read())
    measure = _child_genai if job["peer"].startswith("ort-genai") else _child_transformers
    result = measure(job)
    result.update(peer=job["peer"], context=len(job["prompt"]), new_tokens=job["new_tokens"],
                  threads=job["threads"], spin=job["spin"])
    print(json.dumps(result))


def _peak_rss_bytes() -> int:
    """This process's peak resident set. VmHWM, not getrusage's ru_maxrss: Linux carries
    ru_maxrss across execve, so a child forked from a big parent would report the parent's."""
    return _proc_status_bytes("VmHWM:")


def _current_rss_bytes() -> int:
    return _proc_status_bytes("VmRSS:")


# edgert.memory.proc_status_bytes does this in edgert, but this file also runs in
# bench/.venv-genai, where edgert is not installed (see the module docstring).
def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024  # reported in kB
    raise PeerError(f"/proc/self/status has no {field} line")


def _child_genai(job: dict) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    og.disable_telemetry_events()
    prompt, new_tokens = job["prompt"], job["new_tokens"]
    start = time.perf_counter()
    config = og.Config(job["model"])
    # 0.18 reads ONNX Runtime session options from genai_config.json's decoder.session_options
    # (other string keys there become session config entries); overlaying them sets them per run
    # without rewriting the cached model.
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": job["threads"],
        "session.intra_op.allow_spinning": "1" if job["spin"] else "0",
        "session.set_denormal_as_zero": "1" if job.get("denormal_as_zero") else "0"}}}}))
    model = og.Model(config)
    load_s = time.perf_counter() - start

    def generator(length: int) -> og.Generator:
        params = og.GeneratorParams(model)
        # min_length holds back end-of-sequence until `length`, so every run makes new_tokens.
        params.set_search_options(do_sample=False, max_length=length, min_length=length, batch_size=1)
        return og.Generator(model, params)

    warm = generator(WARMUP_PROMPT + WARMUP_NEW)
    warm.append_tokens(np.asarray(prompt[:WARMUP_PROMPT], dtype=np.int32))
    for _ in range(WARMUP_NEW):
        warm.generate_next_token()
    del warm
    rss_loaded = _current_rss_bytes()

    gen = generator(len(prompt) + new_tokens)
    start = time.perf_counter()
    # append_tokens runs the prompt through the model; the first generate_next_token only picks
    # from those logits, and each later one runs one token and picks.
    gen.append_tokens(np.asarray(prompt, dtype=np.int32))
    gen.generate_next_token()
    tokens = [int(gen.get_next_tokens()[0])]
    prefill_s = time.perf_counter() - start
    decode_ms = []
    for _ in range(new_tokens - 1):
        step = time.perf_counter()
        gen.generate_next_token()
        tokens.append(int(gen.get_next_tokens()[0]))
        decode_ms.append((time.perf_counter() - step) * 1e3)
    peak = _peak_rss_bytes()  # before get_output below copies a cache tensor
    # With past_present_share_buffer (the builder's CPU default) GenAI allocates each layer's
    # K and V once at search max_length = C + N; read one present tensor's shape and dtype:
    # kv_bytes = 2 (K, V) * layers * kv_heads * max_length * head_dim * itemsize.
    layers = json.loads((Path(job["model"]) / "genai_config.json").read_text())[
        "model"]["decoder"]["num_hidden_layers"]
    present = gen.get_output("present.0.key")
    kv_bytes = 2 * layers * present.nbytes
    return {"prefill_s": prefill_s, "decode_ms": decode_ms, "kv_bytes": kv_bytes,
            "kv_note": f"preallocated [1, kv_heads, max_length, head_dim] = {list(present.shape)} "
                       f"{present.dtype} per K/V per layer",
            "peak_rss_bytes": peak, "rss_loaded_bytes": rss_loaded, "load_s": load_s,
            "tokens": tokens, "versions": {"onnxruntime-genai": og.__version__}}


def _child_transformers(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    torch.set_num_interop_threads(1)
    import transformers
    from transformers import AutoModelForCausalLM, DynamicCache

    prompt, new_tokens = job["prompt"], job["new_tokens"]
    suppress = torch.tensor(job["suppress_ids"])
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32,
                                                 attn_implementation="sdpa").eval()
    load_s = time.perf_counter() - start

    def pick(logits: torch.Tensor) -> int:
        logits = logits[0, -1].clone()
        logits[suppress] = float("-inf")  # as GenAI's min_length does
        return int(torch.argmax(logits))

    def run(ids: list[int], count: int, times: list[float] | None = None) -> tuple[list[int], DynamicCache]:
        cache = DynamicCache(config=model.config)
        step = time.perf_counter()
        # logits_to_keep=1: only the last position goes through the LM head (GenAI's prune_lm_head).
        out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True, logits_to_keep=1)
        tokens = [pick(out.logits)]
        if times is not None:
            times.append(time.perf_counter() - step)
        for _ in range(count - 1):
            step = time.perf_counter()
            out = model(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache, use_cache=True)
            tokens.append(pick(out.logits))
            if times is not None:
                times.append(time.perf_counter() - step)
        return tokens, cache

    with torch.inference_mode():
        run(prompt[:WARMUP_PROMPT], WARMUP_NEW)
        rss_loaded = _current_rss_bytes()
        times: list[float] = []
        tokens, cache = run(prompt, new_tokens, times)
    peak = _peak_rss_bytes()
    # DynamicCache grows by concatenation: each layer holds K and V of [1, kv_heads, length, head_dim]
    # for the tokens fed so far (C + N - 1: the last token made is never fed back).
    kv_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    shape = list(cache.layers[0].keys.shape)
    return {"prefill_s": times[0], "decode_ms": [t * 1e3 for t in times[1:]], "kv_bytes": kv_bytes,
            "kv_note": f"DynamicCache, {shape} per K/V per layer at the end",
            "peak_rss_bytes": peak, "rss_loaded_bytes": rss_loaded, "load_s": load_s,
            "tokens": tokens, "versions": {"transformers": transformers.__version__,
                                           "torch": torch.__version__}}


# ---------------------------------------------------------------- CLI

def _table(results: list[dict]):
    import numpy as np
    from rich.table import Table

    table = Table(title="decode peers (greedy, batch 1)")
    for column in ("peer", "context", "prefill ms", "decode ms p50", "p90", "tok/s",
                   "KV MiB", "peak RSS MiB", "tokens = transformers'"):
        table.add_column(column, justify="left" if column == "peer" else "right")
    reference = {r["context"]: r["tokens"] for r in results if r["peer"] == "transformers"}
    for r in results:
        decode = np.asarray(r["decode_ms"]) if r["decode_ms"] else np.asarray([np.nan])
        same = reference.get(r["context"])
        if same is None:
            agree = "-"
        else:
            first = next((i for i, (a, b) in enumerate(zip(r["tokens"], same)) if a != b), None)
            agree = "yes" if first is None else f"no (from token {first})"
        table.add_row(r["peer"], str(r["context"]), f"{r['prefill_s'] * 1e3:.1f}",
                      f"{np.median(decode):.2f}", f"{np.percentile(decode, 90):.2f}",
                      f"{1e3 / np.mean(decode):.1f}", f"{r['kv_bytes'] / 2**20:.2f}",
                      f"{r['peak_rss_bytes'] / 2**20:.0f}", agree)
    return table


def main(argv: list[str] | None = None) -> int:
    """Measure the peers on the reference (or --tiny) model and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny model (smoke runs)")
    parser.add_argument("--context", type=int, nargs="+", default=[256], help="prompt lengths")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS))
    parser.add_argument("--spin", action="store_true",
                        help="let GenAI's ONNX Runtime threads spin while idle (its default)")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(HERE))
    from decode_model import reference_model_dir, tiny_model_dir
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 132)
    model_dir = (tiny_model_dir if args.tiny else reference_model_dir)(WORK / "models")
    results = []
    for context in args.context:
        for peer in args.peers:
            try:
                results.append(measure_peer(peer, model_dir, context, args.new_tokens, args.threads,
                                            spin=args.spin))
            except (PeerError, ValueError) as exc:
                console.print(f"[red]{peer}, context {context}:[/] {exc}")
    if results:
        console.print(_table(results))
    if args.json:
        from edgert._io import write_text_atomic

        write_text_atomic(args.json, json.dumps(results, indent=1))
    return 0 if results else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--child"]:
        _child_main()
    else:
        sys.exit(main())
