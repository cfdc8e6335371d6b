"""K-quant blocks for the tests (files are written with ``llama.checkpoint.write_gguf``).

K-quant blocks are packed here from chosen integers by the block layouts of ggml's
``block_q2_K``/``block_q4_K``/``block_q5_K``/``block_q6_K`` (ggml-common.h), so a test can predict
every dequantized value from the integers alone, without any decoder.
"""

from __future__ import annotations

import numpy as np

QK_K = 256  # values per K-quant block


def _f16_bytes(x: float) -> np.ndarray:
    return np.array([x], dtype=np.float16).view(np.uint8)


def _pack_scales_k4(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """12 bytes holding 8 six-bit scales and 8 six-bit mins (inverse of ggml's get_scale_min_k4)."""
    out = np.zeros(12, dtype=np.uint8)
    for j in range(4):
        out[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6)
        out[j + 4] = (m[j] & 63) | ((m[j + 4] >> 4) << 6)
        out[j + 8] = (sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4)
    return out


def pack_q4_k(d: float, dmin: float, sc: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One Q4_K block: value v = d*sc[v//32]*q[v] - dmin*m[v//32]; q in 0..15, sc/m in 0..63."""
    qs = np.zeros(128, dtype=np.uint8)
    for v in range(QK_K):
        chunk, half, l = v // 64, (v // 32) % 2, v % 32  # 64 values share 32 bytes: low then high nibbles
        qs[32 * chunk + l] |= q[v] << (4 * half)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_scales_k4(sc, m), qs])


def pack_q5_k(d: float, dmin: float, sc: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One Q5_K block: as Q4_K with q in 0..31; bit 4 of q[v] is bit v//32 of qh[v%32]."""
    qh = np.zeros(32, dtype=np.uint8)
    qs = np.zeros(128, dtype=np.uint8)
    for v in range(QK_K):
        chunk, half, l = v // 64, (v // 32) % 2, v % 32
        qs[32 * chunk + l] |= (q[v] & 0xF) << (4 * half)
        qh[l] |= (q[v] >> 4) << (v // 32)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), _pack_scales_k4(sc, m), qh, qs])


def pack_q6_k(d: float, sc: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One Q6_K block: value v = d*sc[v//16]*(q[v]-32); q in 0..63, sc int8."""
    ql = np.zeros(128, dtype=np.uint8)
    qh = np.zeros(64, dtype=np.uint8)
    for v in range(QK_K):
        half, k, l = v // 128, (v % 128) // 32, v % 32
        ql[64 * half + l + 32 * (k % 2)] |= (q[v] & 0xF) << (4 * (k // 2))
        qh[32 * half + l] |= (q[v] >> 4) << (2 * k)
    return np.concatenate([ql, qh, sc.astype(np.int8).view(np.uint8), _f16_bytes(d)])


def pack_q2_k(d: float, dmin: float, sc: np.ndarray, m: np.ndarray, q: np.ndarray) -> np.ndarray:
    """One Q2_K block: value v = d*sc[v//16]*q[v] - dmin*m[v//16]; q in 0..3, sc/m in 0..15."""
    qs = np.zeros(64, dtype=np.uint8)
    for v in range(QK_K):
        half, shift = v // 128, 2 * ((v % 128) // 32)
        qs[32 * half + v % 32] |= q[v] << shift
    scales = (sc & 0xF) | ((m & 0xF) << 4)
    return np.concatenate([scales.astype(np.uint8), qs, _f16_bytes(d), _f16_bytes(dmin)])


def random_k_blocks(rng: np.random.Generator, qtype, rows: int, cols: int, scale: float = 1e-4) -> np.ndarray:
    """(rows, bytes per row) of valid random blocks: random quants and sub-block scales; d = scale.

    dmin = d * (largest quant) / 2, so the weights are centred on zero on average, as trained ones are.
    """
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    # byte offsets of the fp16 d (and dmin) in each block layout, and the largest quant
    at, qmax = {"Q2_K": ((80, 82), 3), "Q4_K": ((0, 2), 15), "Q5_K": ((0, 2), 31), "Q6_K": ((208,), 0)}[qtype.name]
    for offset, value in zip(at, (scale, scale * qmax / 2)):
        raw[:, :, offset: offset + 2] = _f16_bytes(value)
    return raw.reshape(rows, -1)
