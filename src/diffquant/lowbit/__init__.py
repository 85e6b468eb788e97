"""A CPU execution path for GGUF block formats: weights stay in their blocks, each linear layer
dequantizes just in time into one reused bf16 buffer with a compiled, threaded kernel, then runs
torch's bf16 GEMM (AMX / AVX-512-BF16 where present). See docs/cpu-lowbit.md."""
