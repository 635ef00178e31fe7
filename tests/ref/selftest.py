#!/usr/bin/python3
"""Self-checks of the float64 reference; needs no real checkpoint.

    /usr/bin/python3 tests/ref/selftest.py        exit 0 on success, 1 with messages on failure

Checks:
  - FP8 e4m3 decode of all 256 codes against two independent constructions (IEEE float32 bit
    assembly via struct, and a walk over the codes by ulp steps), anchor values, NaN codes, and the
    round-to-nearest-even encoder; BF16 round trip
  - Sylvester-Hadamard matrices orthonormal and symmetric
  - rope: interleaved and half layouts agree up to a permutation; scores depend only on p - s
  - YaRN low/high (10/23) and frequencies for the real config; softmax scale 0.135234
  - absorbed (MQA) MLA form equals the full (MHA) form on random data with a sparse mask
  - noaux_tc routing on hand-made examples with known answers, ties to the lower index
  - indexer top-k selection: ties toward the lower position, causal, count min(k, t+1)
  - FP8 activation rounding (amax/448 and ue8m0 scales)
  - a synthetic safetensors checkpoint (two shards + index, F32/BF16/F8 with ragged scale blocks)
    written here and read back, and malformed files rejected with an error
  - a tiny random V3.2 checkpoint: forward finite, prefix property (logits of a prefix equal the
    first rows of the longer sequence) with contexts longer than index_topk, absorbed == full,
    index_topk >= T equals dense V3 attention, indexer_fp8 variants, greedy, run_ref.py end to end
"""

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep tests/ref free of __pycache__
sys.path.insert(0, HERE)

import deepseek_ref as R  # noqa: E402
import safetensors_reader as S  # noqa: E402

FAILURES = []


def check(cond, msg):
    if not cond:
        FAILURES.append(msg)
        print("FAIL: " + msg)


def close(a, b, tol, msg):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = max(1.0, float(np.max(np.abs(b))) if b.size else 1.0)
    check(a.shape == b.shape and err <= tol * scale, "%s (max err %.3g, shape %s vs %s)"
          % (msg, err, a.shape, b.shape))


# ----------------------------------------------------------------------------------------------

def test_fp8():
    t = S.fp8_e4m3_table()
    # 1) IEEE float32 assembly: normal e4m3 (e>0) is float32 with exponent e - 7 + 127, mantissa m << 20;
    #    subnormal is m * 2^-9 computed with ldexp.
    for code in range(256):
        s, e, m = code >> 7, (code >> 3) & 15, code & 7
        if e == 15 and m == 7:
            check(math.isnan(t[code]), "fp8 code 0x%02x must be NaN" % code)
            continue
        if e == 0:
            v = math.ldexp(m, -9)
            v = -v if s else v
        else:
            bits = (s << 31) | ((e - 7 + 127) << 23) | (m << 20)
            v = struct.unpack("<f", struct.pack("<I", bits))[0]
        check(t[code] == v and math.copysign(1, t[code]) == math.copysign(1, v),
              "fp8 code 0x%02x decodes to %r, expected %r" % (code, t[code], v))
        # MODEL.md's bf16 view of normal codes: bits (s<<15)|((e+120)<<7)|(m<<4)
        if e:
            bf = (s << 15) | ((e + 120) << 7) | (m << 4)
            check(S.decode_bf16(np.array([bf], dtype=np.uint16))[0] == t[code],
                  "fp8 code 0x%02x disagrees with its bf16 form" % code)
    # 2) walk: positive codes 0..0x7E increase by the ulp of their binade: 2^-9 up to code 0x0f, then
    #    2^(e-10) within binade e.
    v = 0.0
    for code in range(0x7F):
        check(t[code] == v, "fp8 walk: code 0x%02x is %r, expected %r" % (code, t[code], v))
        e = max(code >> 3, 1)
        v += 2.0 ** (e - 10)
    for code in range(0x80):
        if code != 0x7F:
            check(t[code | 0x80] == -t[code], "fp8 code 0x%02x is not the negative of 0x%02x" % (code | 0x80, code))
    check(t[0x7E] == 448.0 and t[0x38] == 1.0 and t[0x01] == 2.0 ** -9 and t[0x08] == 2.0 ** -6,
          "fp8 anchors 448 / 1 / 2^-9 / 2^-6")
    check(np.signbit(t[0x80]) and t[0x80] == 0.0, "fp8 0x80 is -0")
    check(not np.any(np.isinf(t)), "fp8 has no infinities")
    # encoder: exact round trip and ties to even
    finite = np.array([c for c in range(256) if c not in (0x7F, 0xFF)], dtype=np.uint8)
    enc = S.encode_fp8_e4m3(t[finite])
    check(np.array_equal(enc, finite), "fp8 encode(decode(c)) == c for every finite code")
    cases = {1.0625: 1.0, 1.1875: 1.25, 1.09: 1.125, 500.0: 448.0, -3.0 * 2 ** -10: -2.0 ** -8,
             2 ** -10: 0.0, 1.5 * 2 ** -9: 2 ** -8, 15 * 2 ** -10: 2 ** -6, 464.0: 448.0}
    for x, want in cases.items():
        got = S.round_to_fp8_e4m3(np.array([x]))[0]
        check(got == want, "fp8 round(%r) = %r, expected %r" % (x, got, want))
    # bf16
    x = np.array([1.0, -2.5, 3.140625, 1e-30, 65504.0, 1.00390625, 1.01171875])
    rt = S.decode_bf16(S.encode_bf16(x))
    check(rt[0] == 1.0 and rt[1] == -2.5 and rt[2] == 3.140625, "bf16 exact values round-trip")
    check(rt[5] == 1.0 and rt[6] == 1.015625, "bf16 round to nearest even")


def test_hadamard():
    for n in (1, 2, 4, 8, 16, 32, 64, 128):
        H = R.hadamard(n)
        close(H @ H.T, np.eye(n), 1e-14, "Hadamard %d orthonormal" % n)
        check(np.array_equal(H, H.T), "Hadamard %d symmetric" % n)
        check(np.allclose(np.abs(H), n ** -0.5), "Hadamard %d entries +-n^-0.5" % n)
    H2 = R.hadamard(2) * math.sqrt(2)
    check(np.array_equal(H2, np.array([[1, 1], [1, -1]])), "Hadamard 2 layout")
    try:
        R.hadamard(96)
        check(False, "Hadamard 96 must be refused")
    except ValueError:
        pass


def real_config_dict():
    return {
        "model_type": "deepseek_v32", "hidden_size": 7168, "num_hidden_layers": 61, "vocab_size": 129280,
        "intermediate_size": 18432, "moe_intermediate_size": 2048, "first_k_dense_replace": 3,
        "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8, "n_group": 8,
        "topk_group": 4, "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "routed_scaling_factor": 2.5, "num_attention_heads": 128, "q_lora_rank": 1536,
        "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
        "index_n_heads": 64, "index_head_dim": 128, "index_topk": 2048, "rms_norm_eps": 1e-6,
        "rope_theta": 10000, "max_position_embeddings": 163840,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                "activation_scheme": "dynamic", "scale_fmt": "ue8m0"},
        "num_nextn_predict_layers": 1,
    }


def test_yarn():
    cfg = R.Config(real_config_dict())
    check(cfg.has_indexer, "real config has the indexer")
    low, high = R.yarn_correction_range(64, 10000.0, 4096, 32, 1)
    check((low, high) == (10, 23), "YaRN correction range (10, 23), got (%d, %d)" % (low, high))
    f = R.rope_frequencies(cfg)
    base = 10000.0 ** (-np.arange(32) / 32.0)
    check(f.shape == (32,), "YaRN frequency count 32")
    close(f[:11], base[:11], 1e-15, "YaRN: i <= low keeps f_i")
    close(f[23:], base[23:] / 40, 1e-15, "YaRN: i >= high gives f_i / 40")
    r = 6 / 13.0
    close(f[16], base[16] / 40 * r + base[16] * (1 - r), 1e-15, "YaRN: i = 16 interpolates")
    check(np.all(np.diff(f) < 0), "YaRN frequencies decrease")
    cos, sin = R.rope_cos_sin(cfg, np.array([0, 1, 1000]))
    close(cos[0], np.ones(32), 0, "rope position 0 cos 1")
    close(cos[2] ** 2 + sin[2] ** 2, np.ones(32), 1e-14, "rope cos^2+sin^2 = 1 (no extra mscale)")
    scale = 192 ** -0.5 * (0.1 * math.log(40) + 1) ** 2
    check(abs(scale - 0.135234) < 1e-6, "softmax scale 0.135234, got %r" % scale)
    cfg3 = R.Config(dict(real_config_dict(), model_type="deepseek_v3"))
    check(not cfg3.has_indexer, "deepseek_v3 has no indexer")
    d = real_config_dict()
    for k in ("index_n_heads", "index_head_dim", "index_topk"):
        del d[k]
    check(not R.Config(d).has_indexer, "no index_* keys -> no indexer")


def test_rope():
    rng = np.random.default_rng(1)
    d = 16
    cfg = R.Config(dict(real_config_dict(), qk_rope_head_dim=d))
    pos = np.arange(40)
    cos, sin = R.rope_cos_sin(cfg, pos)
    q, k = rng.standard_normal(d), rng.standard_normal(d)
    # interleaved layout == half layout after permuting (x0,x1,x2,...) -> (x0,x2,...,x1,x3,...)
    perm = np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)])
    X = rng.standard_normal((40, 3, d))
    a = R.rope_interleaved(X, cos, sin)[..., perm]
    b = R.rope_half(X[..., perm], cos, sin)
    close(a, b, 1e-14, "rope interleaved == half up to permutation")
    for fn in (R.rope_interleaved, R.rope_half):
        Q = fn(np.tile(q, (40, 1)), cos, sin)
        K = fn(np.tile(k, (40, 1)), cos, sin)
        close(np.linalg.norm(Q, axis=1), np.full(40, np.linalg.norm(q)), 1e-13, "rope keeps norms")
        close(Q[30] @ K[25], Q[10] @ K[5], 1e-12, "rope score depends on p - s only (%s)" % fn.__name__)
    # explicit pair layouts
    x = np.zeros((2, d))
    x[:, 0] = 1.0
    ci, si = cos[:2], sin[:2]
    y = R.rope_interleaved(x, ci, si)
    close(y[1, :2], [ci[1, 0], si[1, 0]], 1e-15, "interleaved rotates (x0, x1)")
    y = R.rope_half(x, ci, si)
    close(y[1, [0, d // 2]], [ci[1, 0], si[1, 0]], 1e-15, "half rotates (x0, x_{d/2})")


def test_mla_forms():
    rng = np.random.default_rng(2)
    T, H, dn, dr, dv, r = 11, 3, 8, 4, 6, 10
    q_nope = rng.standard_normal((T, H, dn))
    q_pe = rng.standard_normal((T, H, dr))
    c = rng.standard_normal((T, r))
    k_pe = rng.standard_normal((T, dr))
    wkv_b = rng.standard_normal((H * (dn + dv), r))
    allowed = np.tril(rng.random((T, T)) < 0.6)
    allowed[np.arange(T), np.arange(T)] = True
    o1, p1 = R.mla_attention_full(q_nope, q_pe, c, k_pe, wkv_b, dv, 0.3, allowed)
    o2, p2 = R.mla_attention_absorbed(q_nope, q_pe, c, k_pe, wkv_b, dv, 0.3, allowed)
    close(p2, p1, 1e-13, "absorbed MLA probabilities == full")
    close(o2, o1, 1e-12, "absorbed MLA output == full")
    check(np.all(p1[:, ~allowed] == 0), "masked positions get probability 0")
    close(p1.sum(-1), np.ones((H, T)), 1e-14, "probabilities sum to 1")
    # direct scores of the full form, written out per head for one (t, s)
    W = wkv_b.reshape(H, dn + dv, r)
    t, s, h = 7, 3, 1
    k_nope = W[h, :dn] @ c[s]
    full = (q_nope[t, h] @ k_nope + q_pe[t, h] @ k_pe[s]) * 0.3
    q_lat = W[h, :dn].T @ q_nope[t, h]
    absorbed = (q_lat @ c[s] + q_pe[t, h] @ k_pe[s]) * 0.3
    check(abs(full - absorbed) < 1e-12, "single score: absorbed == full")


def logit(p):
    p = np.asarray(p, dtype=np.float64)
    return np.log(p / (1 - p))


def test_routing():
    s = np.array([0.9, 0.1, 0.8, 0.75, 0.5, 0.5, 0.2, 0.85])
    bias = np.array([0, 0, 0, 0, 0, 0, 0.7, 0])
    # groups of 2: b sums g0 1.0, g1 1.55, g2 1.0, g3 0.9+0.85 -> keep g3, g1 -> experts 2,3,6,7
    # top-2 of b among them: 6 (0.9, thanks to the bias), 7 (0.85); expert 0 (0.9) is in a dropped group
    idx, w = R.route_noaux_tc(logit(s)[None], bias, 4, 2, 2, True, 2.5)
    check(list(idx[0]) == [6, 7], "routing picks [6, 7], got %s" % list(idx[0]))
    close(w[0], [0.2 / 1.05 * 2.5, 0.85 / 1.05 * 2.5], 1e-12, "routing weights from unbiased scores")
    idx, w = R.route_noaux_tc(logit(s)[None], bias, 1, 1, 2, True, 1.0)
    check(sorted(idx[0]) == [0, 6] or sorted(idx[0]) == [6, 0], "no group limit: picks 0 and 6, got %s"
          % list(idx[0]))
    idx, w = R.route_noaux_tc(logit(s)[None], bias, 4, 2, 2, False, 2.5)
    close(w[0], [0.2 * 2.5, 0.85 * 2.5], 1e-12, "norm_topk_prob false: no normalization")
    # ties: all equal -> lowest indices, lowest groups
    idx, w = R.route_noaux_tc(np.zeros((1, 8)), np.zeros(8), 4, 2, 3, True, 1.0)
    check(list(idx[0]) == [0, 1, 2], "ties go to the lower expert index, got %s" % list(idx[0]))
    close(w[0], np.full(3, 1 / 3), 1e-15, "tie weights")
    idx, _ = R.route_noaux_tc(np.zeros((1, 8)), np.array([0, 0, 0, 0, 0, 0, 0, 1e-3]), 4, 2, 3, True, 1.0)
    check(list(idx[0]) == [7, 0, 1], "group tie: group 3 then group 0, got %s" % list(idx[0]))


def test_indexer_select():
    T = 10
    allowed, sel = R.indexer_select(np.zeros((T, T)), 4)
    for t in range(T):
        want = np.arange(min(4, t + 1))
        check(np.array_equal(sel[t], want), "zero scores keep the lowest positions (t=%d): %s" % (t, sel[t]))
    check(np.array_equal(allowed.sum(1), np.minimum(4, np.arange(T) + 1)), "selection count min(k, t+1)")
    I = np.arange(T * T, dtype=np.float64).reshape(T, T)  # later positions score higher
    I[9, 3] = 1e9
    allowed, sel = R.indexer_select(I, 3)
    check(np.array_equal(sel[9], [3, 8, 9]), "top-3 of row 9: %s" % sel[9])
    check(not np.any(allowed & ~np.tril(np.ones((T, T), dtype=bool))), "selection is causal")
    I = np.zeros((T, T))
    I[9, 5] = I[9, 2] = 1.0
    I[9, 7] = -0.0
    _, sel = R.indexer_select(I, 4)
    check(np.array_equal(sel[9], [0, 1, 2, 5]), "ties after the winners go low: %s" % sel[9])


def test_fp8_act_round():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 256)) * np.array([1e-6, 1e-3, 1, 10, 1e3])[:, None]
    for ue in (False, True):
        y = R.fp8_act_round(x, ue)
        for b0 in (0, 128):
            seg, yseg = x[:, b0:b0 + 128], y[:, b0:b0 + 128]
            amax = np.maximum(np.abs(seg).max(1), 1e-4)
            s = amax / 448
            if ue:
                s = 2.0 ** np.ceil(np.log2(s))
            codes = yseg / s[:, None]            # exact for power-of-two scales, else within 1 ulp
            tol = 0 if ue else 1e-13
            close(S.round_to_fp8_e4m3(codes), codes, tol, "fp8 act: values are fp8 * scale (ue8m0=%s)" % ue)
            check(np.all(np.abs(codes) <= 448 * (1 + tol)), "fp8 act: within range")
            live = np.abs(seg).max(1) > 1e-4      # rows whose amax is not floored
            top = np.abs(codes).max(1)[live]
            check(live.sum() >= 3 and np.all(top >= (448 if not ue else 224) * (1 - 1e-13)),
                  "fp8 act: each block maximum uses the top of the range (ue8m0=%s)" % ue)
            check(np.all(np.abs(codes).max(1)[~live] < 448), "fp8 act: amax floored at 1e-4")
            big = np.abs(seg) > 2 ** -6 * s[:, None]
            rel = np.abs(yseg - seg)[big] / np.abs(seg)[big]
            check(np.all(rel <= 2 ** -4 + 1e-12), "fp8 act: relative error <= 2^-4 for normal codes")
        close(R.fp8_act_round(y, ue), y, 0, "fp8 act rounding idempotent (ue8m0=%s)" % ue)
    check(np.array_equal(R._ceil_pow2(np.array([1.0, 0.75, 3.0, 2.0 ** -20, 1.5 * 2.0 ** -20])),
                         [1.0, 1.0, 4.0, 2.0 ** -20, 2.0 ** -19]), "ceil power of two")


# ----------------------------------------------------------------------------------------------
# Writing test checkpoints
# ----------------------------------------------------------------------------------------------

def _entry_f32(a):
    a = np.asarray(a, dtype="<f4")
    return ("F32", a.shape, a.tobytes())


def _entry_bf16(a):
    return ("BF16", np.shape(a), S.encode_bf16(a).astype("<u2").tobytes())


def _entries_fp8(name, w, block=128):
    """FP8 weight + F32 weight_scale_inv for a float weight [out, in] (scale = block amax / 448)."""
    out_dim, in_dim = w.shape
    nb_o, nb_i = -(-out_dim // block), -(-in_dim // block)
    scale = np.zeros((nb_o, nb_i), dtype=np.float32)
    for i in range(nb_o):
        for j in range(nb_i):
            blk = w[i * block:(i + 1) * block, j * block:(j + 1) * block]
            scale[i, j] = max(np.abs(blk).max(), 1e-12) / 448.0
    full = np.repeat(np.repeat(scale.astype(np.float64), block, 0), block, 1)[:out_dim, :in_dim]
    codes = S.encode_fp8_e4m3(w / full)
    return {name: ("F8_E4M3", w.shape, codes.tobytes()),
            name[:-len(".weight")] + ".weight_scale_inv": _entry_f32(scale)}


def tiny_config(**kw):
    d = {
        "architectures": ["DeepseekV32ForCausalLM"], "model_type": "deepseek_v32",
        "hidden_size": 160, "num_hidden_layers": 2, "first_k_dense_replace": 1,
        "intermediate_size": 192, "moe_intermediate_size": 48, "n_routed_experts": 16,
        "n_shared_experts": 1, "num_experts_per_tok": 4, "n_group": 4, "topk_group": 2,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": True,
        "routed_scaling_factor": 2.5, "num_attention_heads": 4, "q_lora_rank": 48,
        "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
        "index_n_heads": 4, "index_head_dim": 32, "index_topk": 8, "vocab_size": 211,
        "rms_norm_eps": 1e-6, "rope_theta": 10000, "max_position_embeddings": 163840,
        "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                         "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
        "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128],
                                "activation_scheme": "dynamic"},
        "num_nextn_predict_layers": 1, "bos_token_id": 0, "eos_token_id": 1, "some_unknown_key": 3,
    }
    d.update(kw)
    return d


def write_tiny_checkpoint(directory, cfg, seed=0, shards=2):
    """Random weights in the Hugging Face layout of MODEL.md section 2 (plus a stub MTP layer)."""
    rng = np.random.default_rng(seed)
    c = R.Config(cfg)
    D, V = c.hidden_size, c.vocab_size
    H, dn, dr, dv = c.num_attention_heads, c.qk_nope_head_dim, c.qk_rope_head_dim, c.v_head_dim
    T = {}

    def lin(name, out_dim, in_dim, gain=1.0):
        w = rng.standard_normal((out_dim, in_dim)) * gain / math.sqrt(in_dim)
        T.update(_entries_fp8(name, w))

    def norm(name, n):
        T[name] = _entry_bf16(1.0 + 0.1 * rng.standard_normal(n))

    T["model.embed_tokens.weight"] = _entry_bf16(rng.standard_normal((V, D)))
    norm("model.norm.weight", D)
    T["lm_head.weight"] = _entry_bf16(rng.standard_normal((V, D)) / math.sqrt(D))
    for L in range(c.num_hidden_layers):
        p = "model.layers.%d." % L
        a = p + "self_attn."
        norm(p + "input_layernorm.weight", D)
        norm(p + "post_attention_layernorm.weight", D)
        lin(a + "q_a_proj.weight", c.q_lora_rank, D)
        norm(a + "q_a_layernorm.weight", c.q_lora_rank)
        lin(a + "q_b_proj.weight", H * (dn + dr), c.q_lora_rank, 2.0)
        lin(a + "kv_a_proj_with_mqa.weight", c.kv_lora_rank + dr, D)
        norm(a + "kv_a_layernorm.weight", c.kv_lora_rank)
        lin(a + "kv_b_proj.weight", H * (dn + dv), c.kv_lora_rank, 2.0)
        lin(a + "o_proj.weight", D, H * dv)
        if "index_n_heads" in cfg:
            nI, dI = cfg["index_n_heads"], cfg["index_head_dim"]
            lin(a + "indexer.wq_b.weight", nI * dI, c.q_lora_rank)
            lin(a + "indexer.wk.weight", dI, D)
            norm(a + "indexer.k_norm.weight", dI)
            T[a + "indexer.k_norm.bias"] = _entry_bf16(0.1 * rng.standard_normal(dI))
            T[a + "indexer.weights_proj.weight"] = _entry_bf16(rng.standard_normal((nI, D)) / math.sqrt(D))
        m = p + "mlp."
        if c.is_moe_layer(L):
            E, I = c.n_routed_experts, c.moe_intermediate_size
            T[m + "gate.weight"] = _entry_bf16(rng.standard_normal((E, D)) / math.sqrt(D))
            T[m + "gate.e_score_correction_bias"] = _entry_f32(0.05 * rng.standard_normal(E))
            for e in range(E):
                lin(m + "experts.%d.gate_proj.weight" % e, I, D)
                lin(m + "experts.%d.up_proj.weight" % e, I, D)
                lin(m + "experts.%d.down_proj.weight" % e, D, I)
            Is = I * c.n_shared_experts
            lin(m + "shared_experts.gate_proj.weight", Is, D)
            lin(m + "shared_experts.up_proj.weight", Is, D)
            lin(m + "shared_experts.down_proj.weight", D, Is)
        else:
            lin(m + "gate_proj.weight", c.intermediate_size, D)
            lin(m + "up_proj.weight", c.intermediate_size, D)
            lin(m + "down_proj.weight", D, c.intermediate_size)
    # MTP stub: must be skipped (deliberately malformed scale to prove it is never read)
    mtp = "model.layers.%d." % c.num_hidden_layers
    T[mtp + "enorm.weight"] = _entry_bf16(np.ones(D))
    T[mtp + "eh_proj.weight"] = ("F8_E4M3", (D, 2 * D), bytes(2 * D * D))
    T[mtp + "eh_proj.weight_scale_inv"] = _entry_f32(np.ones((1, 1)))

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    names = list(T)
    if shards <= 1:
        S.write_safetensors(os.path.join(directory, "model.safetensors"), T, {"format": "pt"})
        return
    weight_map = {}
    per = -(-len(names) // shards)
    for k in range(shards):
        fname = "model-%05d-of-%05d.safetensors" % (k + 1, shards)
        part = {n: T[n] for n in names[k * per:(k + 1) * per]}
        S.write_safetensors(os.path.join(directory, fname), part, {"format": "pt"})
        weight_map.update({n: fname for n in part})
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def test_safetensors(tmp):
    rng = np.random.default_rng(4)
    d = os.path.join(tmp, "st")
    os.makedirs(d)
    w = rng.standard_normal((200, 300))
    f32 = rng.standard_normal((3, 5)).astype(np.float32)
    bf = rng.standard_normal(7)
    ents = _entries_fp8("a.b.weight", w)
    s1 = {"x.f32": _entry_f32(f32), "y.weight": _entry_bf16(bf)}
    S.write_safetensors(os.path.join(d, "s1.safetensors"), s1, {"format": "pt"})
    S.write_safetensors(os.path.join(d, "s2.safetensors"), ents)
    wm = {"x.f32": "s1.safetensors", "y.weight": "s1.safetensors",
          "a.b.weight": "s2.safetensors", "a.b.weight_scale_inv": "s2.safetensors"}
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 1}, "weight_map": wm}, f)
    ck = S.Checkpoint(d)
    check(sorted(ck.names()) == sorted(wm), "index lists all tensors")
    close(ck.weight("x.f32"), f32, 0, "F32 read back exactly")
    close(ck.weight("y.weight"), S.decode_bf16(S.encode_bf16(bf)), 0, "BF16 read back")
    close(ck.weight("y.weight"), bf, 2 ** -8, "BF16 close to the original")
    check(ck.info("a.b.weight") == ("F8_E4M3", (200, 300)), "FP8 info")
    scale = ck.raw("a.b.weight_scale_inv")
    check(scale.shape == (2, 3), "ragged scale shape [2, 3]")
    codes = ck.raw("a.b.weight")
    deq = ck.weight("a.b.weight", (200, 300))
    manual = np.empty((200, 300))
    for i in range(200):           # element by element: W_real[i][j] = fp8(W[i][j]) * scale[i/128][j/128]
        for j in range(0, 300):
            manual[i, j] = codes[i, j] * scale[i // 128, j // 128]
    close(deq, manual, 0, "FP8 block dequantization (ragged) matches per-element formula")
    close(deq, w, 0.07, "dequantized FP8 close to the original")
    # the raw byte layout: header length, JSON, data offsets relative to the data start
    with open(os.path.join(d, "s1.safetensors"), "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    hdr = json.loads(blob[8:8 + n])
    b0, b1 = hdr["x.f32"]["data_offsets"]
    close(np.frombuffer(blob[8 + n + b0:8 + n + b1], "<f4").reshape(3, 5), f32, 0, "raw layout")
    check(hdr["__metadata__"] == {"format": "pt"}, "metadata kept")
    try:
        ck.weight("a.b.weight", (300, 200))
        check(False, "wrong expected shape must fail")
    except S.SafetensorsError as e:
        check("a.b.weight" in str(e), "shape error names the tensor")
    try:
        ck.weight("missing.weight")
        check(False, "missing tensor must fail")
    except S.SafetensorsError as e:
        check("missing.weight" in str(e), "missing-tensor error names the tensor")

    # malformed single files
    def bad(name, data, what):
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(data)
        try:
            S.SafetensorsFile(p)
            check(False, "malformed file accepted: " + what)
        except S.SafetensorsError as e:
            check(name in str(e), "error names the file (%s): %s" % (what, e))

    def mk(header, data=b""):
        t = json.dumps(header).encode()
        return struct.pack("<Q", len(t)) + t + data

    bad("b1.safetensors", b"\x01\x02", "short")
    bad("b2.safetensors", struct.pack("<Q", 1000) + b"{}", "header past the end")
    bad("b3.safetensors", struct.pack("<Q", 3) + b"{x}", "not JSON")
    bad("b4.safetensors", mk({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"1234"),
        "offsets out of bounds")
    bad("b5.safetensors", mk({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8)),
        "shape/bytes mismatch")
    bad("b6.safetensors", mk({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}, bytes(2)),
        "unknown dtype")
    t = b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, ' \
        b'"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    bad("b7.safetensors", struct.pack("<Q", len(t)) + t + bytes(4), "duplicate names")
    # FP8 with a wrong scale shape
    d2 = os.path.join(tmp, "st2")
    os.makedirs(d2)
    e = _entries_fp8("w.weight", rng.standard_normal((130, 10)))
    e["w.weight_scale_inv"] = _entry_f32(np.ones((1, 1)))
    S.write_safetensors(os.path.join(d2, "model.safetensors"), e)
    try:
        S.Checkpoint(d2).weight("w.weight")
        check(False, "wrong scale shape must fail")
    except S.SafetensorsError as ex:
        check("w.weight_scale_inv" in str(ex), "scale-shape error names the scale tensor: %s" % ex)


# ----------------------------------------------------------------------------------------------

def test_tiny_model(tmp):
    d = os.path.join(tmp, "tiny")
    cfg = tiny_config()
    write_tiny_checkpoint(d, cfg, seed=5, shards=2)
    t0 = time.time()
    m = R.Model(d)
    rng = np.random.default_rng(6)
    toks = [0] + list(rng.integers(2, cfg["vocab_size"], size=23))
    logits, routing, sel = m.forward(toks)
    T = len(toks)
    check(logits.shape == (T, cfg["vocab_size"]) and logits.dtype == np.float64, "logits shape/dtype")
    check(np.all(np.isfinite(logits)), "logits finite")
    check(sorted(routing) == [1], "routing reported for the MoE layer only")
    r = routing[1]
    check(r.shape == (T, 4) and np.all(np.diff(r, axis=1) > 0) and r.min() >= 0 and r.max() < 16,
          "routing [T, 4], distinct experts, ascending")
    check(sorted(sel) == [0, 1], "indexer selection for every layer")
    for L in sel:
        check(len(sel[L]) == T, "one selection per position")
        for t, s in enumerate(sel[L]):
            check(len(s) == min(8, t + 1) and s.max() <= t and np.all(np.diff(s) > 0),
                  "layer %d position %d: selection causal, sorted, min(topk, t+1) entries" % (L, t))
    dropped = sum(int((s != np.arange(len(s))).any()) for s in sel[1])
    check(dropped > 0, "sparse attention really selects (not just the first positions)")

    # prefix property: a prefix gives the same logits as the first rows of the longer sequence
    for k in (1, 5, 9, 17):
        lk, rk, sk = m.forward(toks[:k])
        close(lk, logits[:k], 1e-10, "prefix %d logits equal" % k)
        check(np.array_equal(rk[1], routing[1][:k]), "prefix %d routing equal" % k)
        check(all(np.array_equal(a, b) for a, b in zip(sk[1], sel[1][:k])), "prefix %d selection equal" % k)

    # absorbed form gives the same model
    ma = R.Model(d, mla_form="absorbed")
    la, ra, _ = ma.forward(toks)
    close(la, logits, 1e-10, "absorbed-form model == full-form model")

    # index_topk >= T: exactly dense attention == the V3 (no indexer) model on the same weights
    ld, _, _ = R.Model(d, config_overrides={"index_topk": 64}).forward(toks)
    lv3, rv3, sv3 = R.Model(d, config_overrides={"model_type": "deepseek_v3"}).forward(toks)
    close(ld, lv3, 1e-11, "index_topk >= T equals dense V3 attention")
    check(sv3 == {}, "V3 model reports no indexer selection")
    check(np.max(np.abs(ld - logits)) > 1e-6, "sparse selection changes the logits")

    # FP8-rounded indexer (both scale formats): runs, prefix property, mostly the same selection
    for fmt in (None, "ue8m0"):
        qc = dict(cfg["quantization_config"])
        if fmt:
            qc["scale_fmt"] = fmt
        mf = R.Model(d, indexer_fp8=True, config_overrides={"quantization_config": qc})
        check(mf.indexer_ue8m0 == (fmt == "ue8m0"), "ue8m0 flag from quantization_config")
        lf, rf, sf = mf.forward(toks)
        check(np.all(np.isfinite(lf)), "fp8 indexer logits finite (%s)" % fmt)
        lf5, _, _ = mf.forward(toks[:13])
        close(lf5, lf[:13], 1e-10, "fp8 indexer prefix property (%s)" % fmt)
        same = np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(sf[1], sel[1])])
        check(same > 0.8, "fp8 indexer selects mostly the same tokens (%s): %.2f" % (fmt, same))

    # greedy == repeated argmax of the full forward
    g = m.greedy(toks[:6], 4)
    ids = list(toks[:6])
    for _ in range(4):
        ids.append(int(np.argmax(m.forward(ids)[0][-1])))
    check(g == ids[6:], "greedy equals repeated argmax")
    for badtoks in ([], [cfg["vocab_size"]], [-1], [[1, 2]]):
        try:
            m.forward(badtoks)
            check(False, "bad tokens %r must be refused" % (badtoks,))
        except ValueError:
            pass

    # speed: 64-token prompt, 32 greedy tokens
    t1 = time.time()
    long_toks = [0] + list(rng.integers(2, cfg["vocab_size"], size=63))
    g = m.greedy(long_toks, 32)
    dt = time.time() - t1
    check(len(g) == 32 and all(0 <= x < cfg["vocab_size"] for x in g), "greedy 32 tokens")
    print("  tiny model: load+checks %.1fs, greedy 64+32 tokens %.1fs" % (t1 - t0, dt))
    check(dt < 60, "greedy 64+32 tokens under a minute (%.1fs)" % dt)

    # single-file checkpoint, dense-only V3 config (no index_* keys, no indexer weights)
    d3 = os.path.join(tmp, "tiny_v3")
    cfg3 = tiny_config(model_type="deepseek_v3", architectures=["DeepseekV3ForCausalLM"],
                       num_hidden_layers=3, first_k_dense_replace=1, n_group=1, topk_group=1)
    for k in ("index_n_heads", "index_head_dim", "index_topk"):
        del cfg3[k]
    write_tiny_checkpoint(d3, cfg3, seed=7, shards=1)
    m3 = R.Model(d3)
    l3, r3, s3 = m3.forward(toks[:10])
    check(np.all(np.isfinite(l3)) and sorted(r3) == [1, 2] and s3 == {}, "V3 single-file model runs")
    close(m3.forward(toks[:4])[0], l3[:4], 1e-10, "V3 prefix property")
    return d, toks


def test_run_ref(tmp, d, toks):
    out = os.path.join(tmp, "ref.npz")
    cmd = [sys.executable, os.path.join(HERE, "run_ref.py"), d, "--tokens", ",".join(map(str, toks[:12])),
           "--greedy", "3", "--out", out]
    p = subprocess.run(cmd, capture_output=True, text=True)
    check(p.returncode == 0, "run_ref.py succeeds: %s" % p.stderr)
    if p.returncode == 0:
        z = np.load(out)
        m = R.Model(d)
        logits, routing, sel = m.forward(toks[:12])
        close(z["logits"], logits, 0, "run_ref logits")
        check(np.array_equal(z["routing_layers"], [1]) and np.array_equal(z["routing_1"], routing[1]),
              "run_ref routing")
        check(np.array_equal(z["indexer_layers"], [0, 1]) and z["indexer_1"].shape == (12, 8),
              "run_ref indexer selection")
        check(np.array_equal(z["indexer_1"][2], [0, 1, 2, -1, -1, -1, -1, -1]), "run_ref selection padding")
        check(np.array_equal(z["greedy"], m.greedy(toks[:12], 3)), "run_ref greedy")
        check(int(z["indexer_fp8"]) == 0, "run_ref indexer_fp8 flag")
    for args, what in (([d, "--tokens", "1,x", "--out", out], "non-integer token"),
                       ([d, "--tokens", "100000", "--out", out], "token out of range"),
                       ([os.path.join(tmp, "nope"), "--tokens", "1", "--out", out], "missing checkpoint"),
                       ([tmp, "--tokens", "1", "--out", out], "directory without a checkpoint"),
                       ([d, "--out", out], "missing --tokens")):
        p = subprocess.run([sys.executable, os.path.join(HERE, "run_ref.py")] + args,
                           capture_output=True, text=True)
        check(p.returncode == 1 and p.stderr.strip(), "run_ref.py exits 1 with a message on %s (rc %d)"
              % (what, p.returncode))


def main():
    tmp = tempfile.mkdtemp(prefix="dsm-ref-selftest-")
    tests = [("fp8/bf16 decode", test_fp8), ("hadamard", test_hadamard), ("yarn", test_yarn),
             ("rope", test_rope), ("mla forms", test_mla_forms), ("routing", test_routing),
             ("indexer select", test_indexer_select), ("fp8 activation rounding", test_fp8_act_round),
             ("safetensors", lambda: test_safetensors(tmp))]
    try:
        for name, fn in tests:
            n0 = len(FAILURES)
            try:
                fn()
            except Exception:
                FAILURES.append("%s raised:\n%s" % (name, traceback.format_exc()))
                print(FAILURES[-1])
            print("%s %s" % ("ok  " if len(FAILURES) == n0 else "FAIL", name))
        n0 = len(FAILURES)
        try:
            d, toks = test_tiny_model(tmp)
            print("%s tiny model" % ("ok  " if len(FAILURES) == n0 else "FAIL"))
            n0 = len(FAILURES)
            test_run_ref(tmp, d, toks)
            print("%s run_ref.py" % ("ok  " if len(FAILURES) == n0 else "FAIL"))
        except Exception:
            FAILURES.append("tiny model raised:\n%s" % traceback.format_exc())
            print(FAILURES[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if FAILURES:
        print("selftest: %d check(s) failed" % len(FAILURES))
        return 1
    print("selftest: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
