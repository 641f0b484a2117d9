"""Tuning tests. ``CPU_KERNEL``: the small kernel of the tiny CLIP text encoder they tune on the CPU (a 77x128x128
linear with bias), named as this host compiles it: where the CPU has AVX-512 its f32 weight is stored as the FMA
GEMM's panels (``passes/pack_weights.py``), which the name says."""

from schedules.cpu_fma import target_has_avx512

CPU_KERNEL = "linear_K128_M77_N128_actnone_bias_" + ("wlayoutfma_f32_" if target_has_avx512() else "") + "wtypef32"
