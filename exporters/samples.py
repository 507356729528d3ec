"""Sample text used to trace and validate exports (varied lengths, so padding is exercised)."""

SAMPLE_SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog while the farmer watches from the porch.",
    "Edge devices have little memory.",
    "Quantization maps 32-bit floating point weights and activations to 8-bit integers, "
    "which shrinks models four times and speeds up matrix multiplication on CPUs with VNNI.",
    "Hi!",
    "Attention heads that only look at nearby tokens can keep a short, fixed-size cache.",
    "Paris is the capital of France.",
    "What time does the train to Berlin leave tomorrow morning?",
]
