"""Built-in example weights: a CLIP text encoder with random weights, written in any naming convention and format.

No Stable Diffusion weights ship in any package we can install, so examples and tests generate them. Initialisation
follows CLIP's (normal(0, 0.02) projections, unit layer-norm scales with a little noise) so activations have
realistic magnitudes and quantization error is representative.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdcompile.models.clip_text import CONVENTIONS


@dataclass(frozen=True)
class ClipTextShape:
    vocab: int = 1000
    width: int = 128
    layers: int = 2
    heads: int = 2
    mlp: int = 512
    positions: int = 77


TINY = ClipTextShape()
SD15 = ClipTextShape(vocab=49408, width=768, layers=12, heads=12, mlp=3072, positions=77)


def clip_text_state(shape: ClipTextShape = TINY, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights under transformers-5 names (no prefix), float32."""
    rng = np.random.default_rng(seed)
    d, f = shape.width, shape.mlp
    n = lambda *s, std=0.02: (rng.standard_normal(s) * std).astype(np.float32)  # noqa: E731
    sd = {
        "embeddings.token_embedding.weight": n(shape.vocab, d),
        "embeddings.position_embedding.weight": n(shape.positions, d, std=0.01),
    }
    for i in range(shape.layers):
        p = f"encoder.layers.{i}."
        for ln in ("layer_norm1", "layer_norm2"):
            sd[p + ln + ".weight"] = (1 + n(d, std=0.1)).astype(np.float32)
            sd[p + ln + ".bias"] = n(d)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"] = n(d, d)
            sd[p + f"self_attn.{proj}.bias"] = n(d)
        sd[p + "mlp.fc1.weight"] = n(f, d)
        sd[p + "mlp.fc1.bias"] = n(f)
        sd[p + "mlp.fc2.weight"] = n(d, f)
        sd[p + "mlp.fc2.bias"] = n(d)
    sd["final_layer_norm.weight"] = (1 + n(d, std=0.1)).astype(np.float32)
    sd["final_layer_norm.bias"] = n(d)
    return sd


def rename(state: dict[str, np.ndarray], convention: str) -> dict[str, np.ndarray]:
    prefix = dict(CONVENTIONS)[convention]
    return {prefix + k: v for k, v in state.items()}


def write_safetensors(
    path: Path, state: dict[str, np.ndarray], dtype: str = "f32", metadata: dict[str, str] | None = None
) -> Path:
    from safetensors.numpy import save_file

    conv = {"f32": np.float32, "f16": np.float16}[dtype]
    save_file({k: np.ascontiguousarray(v.astype(conv)) for k, v in state.items()}, str(path), metadata=metadata)
    return Path(path)


def write_gguf(path: Path, state: dict[str, np.ndarray], dtype: str = "f32", metadata: dict | None = None) -> Path:
    """A GGUF as stable-diffusion.cpp writes it: the same (LDM) names, 2-D weights in `dtype`, the rest f32."""
    import gguf

    w = gguf.GGUFWriter(str(path), arch="clip", use_temp_file=False)
    for k, v in (metadata or {}).items():
        if isinstance(v, int):
            w.add_uint32(k, v)
        else:
            w.add_string(k, str(v))
    for name, arr in state.items():
        if arr.ndim == 2 and dtype != "f32" and "position" not in name:
            if dtype == "f16":
                w.add_tensor(name, arr.astype(np.float16))
            else:
                # sdcompile's quantizers: the gguf package has none for the k-quants and iq4 types
                from sdcompile.quant.reference import quantize
                from sdcompile.quant.types import get

                if arr.shape[-1] % get(dtype).block_size:  # rows that do not fill the type's blocks stay f16,
                    w.add_tensor(name, arr.astype(np.float16))  # as llama.cpp's quantizer falls back; inspect shows it
                    continue
                qt = gguf.GGMLQuantizationType(get(dtype).ggml_id)
                data = quantize(arr, dtype).reshape(arr.shape[0], -1)
                w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qt)
        else:
            w.add_tensor(name, arr.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return Path(path)


def example_ids(batch: int = 1, positions: int = 77, vocab: int = 1000, seed: int = 1) -> np.ndarray:
    """Token ids shaped like a CLIP prompt: BOS, some tokens, EOS, then EOS padding (as SD pipelines pad)."""
    rng = np.random.default_rng(seed)
    ids = np.full((batch, positions), vocab - 1, np.int64)
    for b in range(batch):
        n = int(rng.integers(5, positions - 2))
        ids[b, 0] = vocab - 2
        ids[b, 1 : n + 1] = rng.integers(0, vocab - 2, n)
    return ids


def transformers_clip(state: dict[str, np.ndarray], shape: ClipTextShape = TINY, act: str = "quick_gelu"):
    """transformers' CLIPTextModel holding `state` (the independent reference the compiled encoder is checked against)."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=shape.vocab,
        hidden_size=shape.width,
        intermediate_size=shape.mlp,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        max_position_embeddings=shape.positions,
        hidden_act=act,
        layer_norm_eps=1e-5,
        # token ids of the random vocabulary (CLIP's defaults, 49406/49407, lie outside a tiny one)
        bos_token_id=shape.vocab - 2,
        eos_token_id=shape.vocab - 1,
        pad_token_id=shape.vocab - 1,
    )
    model = CLIPTextModel(cfg).eval()
    own = model.state_dict()
    prefix = "text_model." if any(k.startswith("text_model.") for k in own) else ""
    tensors = {prefix + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"reference model mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


def transformers_hidden(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(input_ids=torch.from_numpy(np.asarray(ids, np.int64))).last_hidden_state.numpy()


def artifact_state(artifact: Path) -> dict[str, np.ndarray]:
    """The weights an artifact computes with (stored types decoded to f32), under transformers-5 names.

    Running the reference model on these isolates the compiler's arithmetic from the quantization error it chose.
    """
    from sdcompile.formats import open_store
    from sdcompile.kernels import layouts
    from sdcompile.quant.reference import dequantize

    store = open_store(Path(artifact) / "weights.gguf")
    packed = layouts.artifact_layouts(artifact)  # weights stored in a kernel's order: back to row-major first

    def raw(t):
        data = np.asarray(store.raw(t.name))
        return layouts.row_major(packed[t.name], data, *t.shape) if t.name in packed else data

    return {t.name.removeprefix("text_encoder."): dequantize(raw(t), t.dtype, t.shape) for t in store.infos()}
