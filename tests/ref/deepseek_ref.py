"""Independent float64 NumPy reference of the DeepSeek-V3.2 (DeepSeekMath-V2) forward pass.

Written from docs/MODEL.md alone (not from the engine's C code, not copied from public code), for
tests that compare the dsm engine against it on small synthetic checkpoints. Every computation is in
float64; weights are read with tests/ref/safetensors_reader.py (FP8 blocks dequantized exactly).

    from deepseek_ref import Model
    m = Model("path/to/checkpoint")              # indexer_fp8=False: exact float64 indexer scores
    logits, routing, selection = m.forward([0, 5, 9])
    ids = m.greedy([0, 5, 9], 32)

Structure (MODEL.md section 3), T = number of tokens, D = hidden_size:

    h = embed(tokens)                                        [T, D]   (no scaling)
    for each layer L < num_hidden_layers:                    (the MTP layer is never read)
        h += Attn_L(RMSNorm(h))                              MLA (+ lightning indexer on V3.2)
        h += FFN_L(RMSNorm(h))                               dense SwiGLU or noaux_tc MoE
    logits = lm_head(RMSNorm(h))                             [T, vocab]

Choices where MODEL.md leaves a detail open are stated at the place they are made (search for
"CHOICE").
"""

import json
import math
import os

import numpy as np

try:  # imported as a package member or with tests/ref on sys.path
    from .safetensors_reader import Checkpoint, round_to_fp8_e4m3
except ImportError:  # pragma: no cover
    from safetensors_reader import Checkpoint, round_to_fp8_e4m3

__all__ = [
    "Config", "load_config", "Model", "ConfigError",
    "rms_norm", "layer_norm", "silu", "sigmoid",
    "yarn_correction_range", "rope_frequencies", "yarn_get_mscale", "rope_cos_sin",
    "rope_interleaved", "rope_half", "hadamard",
    "fp8_act_round", "indexer_scores", "indexer_select",
    "route_noaux_tc", "mla_attention_full", "mla_attention_absorbed",
]

NEG_INF = -np.inf


class ConfigError(Exception):
    """config.json is missing, unreadable, or describes an unsupported model."""


# ==============================================================================================
# Configuration (MODEL.md section 1)
# ==============================================================================================

class Config:
    """The config.json keys the forward pass needs, with Hugging Face names."""

    def __init__(self, d):
        def need(key):
            if key not in d or d[key] is None:
                raise ConfigError("config.json: missing key %s" % key)
            return d[key]

        self.raw = d
        self.model_type = d.get("model_type", "")
        self.architectures = d.get("architectures") or []
        self.hidden_size = int(need("hidden_size"))
        self.num_hidden_layers = int(need("num_hidden_layers"))
        self.vocab_size = int(need("vocab_size"))
        self.rms_norm_eps = float(d.get("rms_norm_eps", 1e-6))
        self.intermediate_size = int(need("intermediate_size"))

        # attention (MLA)
        self.num_attention_heads = int(need("num_attention_heads"))
        self.q_lora_rank = d.get("q_lora_rank")          # None -> plain q_proj (not in V3.2)
        self.q_lora_rank = None if self.q_lora_rank is None else int(self.q_lora_rank)
        self.kv_lora_rank = int(need("kv_lora_rank"))
        self.qk_nope_head_dim = int(need("qk_nope_head_dim"))
        self.qk_rope_head_dim = int(need("qk_rope_head_dim"))
        self.v_head_dim = int(need("v_head_dim"))
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        self.rope_theta = float(d.get("rope_theta", 10000.0))
        rs = d.get("rope_scaling") or {}
        self.rope_type = rs.get("type", rs.get("rope_type"))
        self.rope_factor = float(rs.get("factor", 1.0))
        self.rope_orig_max = int(rs.get("original_max_position_embeddings", 4096))
        self.beta_fast = float(rs.get("beta_fast", 32))
        self.beta_slow = float(rs.get("beta_slow", 1))
        self.rope_mscale = float(rs.get("mscale", 1.0))
        self.rope_mscale_all_dim = float(rs.get("mscale_all_dim", 0.0))
        self.yarn = self.rope_type == "yarn" and self.rope_factor > 1.0
        if self.rope_type not in (None, "yarn", "default"):
            raise ConfigError("config.json: rope_scaling type %r is not supported" % self.rope_type)

        # MoE
        self.first_k_dense_replace = int(d.get("first_k_dense_replace", 0))
        self.moe_layer_freq = int(d.get("moe_layer_freq", 1))
        self.n_routed_experts = d.get("n_routed_experts")
        self.n_routed_experts = int(self.n_routed_experts) if self.n_routed_experts else 0
        self.n_shared_experts = int(d.get("n_shared_experts") or 0)
        self.moe_intermediate_size = int(d.get("moe_intermediate_size") or 0)
        self.num_experts_per_tok = int(d.get("num_experts_per_tok") or 0)
        self.n_group = int(d.get("n_group") or 1)
        self.topk_group = int(d.get("topk_group") or 1)
        self.topk_method = d.get("topk_method", "noaux_tc")
        self.scoring_func = d.get("scoring_func", "sigmoid")
        self.norm_topk_prob = bool(d.get("norm_topk_prob", True))
        self.routed_scaling_factor = float(d.get("routed_scaling_factor", 1.0))
        if self.n_routed_experts:
            if self.topk_method != "noaux_tc" or self.scoring_func != "sigmoid":
                raise ConfigError("config.json: only topk_method noaux_tc with scoring_func sigmoid is "
                                  "supported (got %s / %s)" % (self.topk_method, self.scoring_func))
            if self.n_routed_experts % self.n_group:
                raise ConfigError("config.json: n_routed_experts %d not divisible by n_group %d"
                                  % (self.n_routed_experts, self.n_group))
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                raise ConfigError("config.json: group score needs >= 2 experts per group")
            if not (1 <= self.topk_group <= self.n_group):
                raise ConfigError("config.json: topk_group %d not in [1, n_group]" % self.topk_group)
            if not (1 <= self.num_experts_per_tok <= self.topk_group * per_group):
                raise ConfigError("config.json: num_experts_per_tok %d exceeds the experts of the kept "
                                  "groups" % self.num_experts_per_tok)
            if self.moe_intermediate_size <= 0:
                raise ConfigError("config.json: missing moe_intermediate_size")

        # lightning indexer (V3.2 / DSA). deepseek_v3 has none; deepseek_v32 has one when index_* are given.
        idx_keys = ("index_n_heads", "index_head_dim", "index_topk")
        has_idx_keys = all(d.get(k) is not None for k in idx_keys)
        is_v3 = self.model_type == "deepseek_v3" or (
            not self.model_type and "DeepseekV3ForCausalLM" in self.architectures)
        self.has_indexer = has_idx_keys and not is_v3
        if self.has_indexer:
            self.index_n_heads = int(d["index_n_heads"])
            self.index_head_dim = int(d["index_head_dim"])
            self.index_topk = int(d["index_topk"])
            if self.q_lora_rank is None:
                raise ConfigError("config.json: the indexer needs q_lora_rank")
            if self.index_head_dim & (self.index_head_dim - 1) or self.index_head_dim < self.qk_rope_head_dim:
                raise ConfigError("config.json: index_head_dim %d must be a power of two >= qk_rope_head_dim"
                                  % self.index_head_dim)
            if self.index_topk < 1:
                raise ConfigError("config.json: index_topk must be >= 1")

        # quantization: FP8 block size and the activation scale format of the indexer's FP8 rounding
        qc = d.get("quantization_config") or {}
        self.weight_block_size = tuple(qc.get("weight_block_size") or (128, 128))
        self.scale_fmt = qc.get("scale_fmt")
        self.num_nextn_predict_layers = int(d.get("num_nextn_predict_layers") or 0)

        if self.qk_rope_head_dim % 2:
            raise ConfigError("config.json: qk_rope_head_dim must be even")

    def is_moe_layer(self, layer):
        return (self.n_routed_experts > 0 and layer >= self.first_k_dense_replace
                and layer % self.moe_layer_freq == 0)


def load_config(checkpoint_dir, overrides=None):
    path = os.path.join(checkpoint_dir, "config.json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            d = json.load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e))
    except ValueError as e:
        raise ConfigError("%s: not valid JSON: %s" % (path, e))
    if not isinstance(d, dict):
        raise ConfigError("%s: not a JSON object" % path)
    if overrides:
        d = dict(d)
        d.update(overrides)
    return Config(d)


# ==============================================================================================
# Elementwise pieces
# ==============================================================================================

def rms_norm(x, w, eps):
    """x * rsqrt(mean(x^2) + eps) * w over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def layer_norm(x, w, b, eps):
    """(x - mean) / sqrt(var + eps) * w + b over the last axis (biased variance)."""
    mu = np.mean(x, axis=-1, keepdims=True)
    var = np.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def silu(x):
    return x * sigmoid(x)


def softmax_rows(s):
    """Softmax over the last axis; -inf entries get probability 0 (each row has a finite entry)."""
    m = np.max(s, axis=-1, keepdims=True)
    e = np.exp(s - m)
    return e / np.sum(e, axis=-1, keepdims=True)


# ==============================================================================================
# Rotary embedding with YaRN (MODEL.md "YaRN rotary frequencies")
# ==============================================================================================

def yarn_correction_range(dim, theta, orig_max, beta_fast, beta_slow):
    """(low, high) frequency indices of the YaRN ramp for a rope of `dim` dims.

    corr(b) = dim * ln(orig_max / (b * 2 pi)) / (2 ln theta); low = floor(corr(beta_fast)),
    high = ceil(corr(beta_slow)). Real model (dim 64, theta 1e4, 4096, 32, 1): low 10, high 23.
    CHOICE: MODEL.md does not say how to clamp; we clamp low to >= 0 and high to <= dim - 1 as the
    public DeepSeek reference does. (For dim >= 8 with the real rope parameters high <= dim/2 - 1
    anyway, so a clamp to dim/2 - 1 would give the same numbers.)
    """
    def corr(b):
        return dim * math.log(orig_max / (b * 2 * math.pi)) / (2 * math.log(theta))
    low = max(math.floor(corr(beta_fast)), 0)
    high = min(math.ceil(corr(beta_slow)), dim - 1)
    return low, high


def rope_frequencies(cfg, dim=None):
    """float64 [dim/2]: the (YaRN-corrected) angular frequency of each rotated pair.

    f_i = theta^(-2i/dim). With YaRN (factor > 1):
        ramp_i = clamp((i - low) / (high - low), 0, 1)
        f_i'   = f_i / factor * ramp_i + f_i * (1 - ramp_i)
    How this reads: indices i <= low (ramp 0, the fast-rotating high-frequency pairs) keep f_i
    unchanged; indices i >= high (ramp 1, slow low-frequency pairs) become f_i / factor; in between
    linear interpolation. (The public reference writes it with smooth = 1 - ramp; same thing.)
    If high == low, high is taken as low + 0.001 to avoid dividing by zero.
    """
    d = cfg.qk_rope_head_dim if dim is None else dim
    i = np.arange(d // 2, dtype=np.float64)
    f = cfg.rope_theta ** (-2.0 * i / d)
    if cfg.yarn:
        low, high = yarn_correction_range(d, cfg.rope_theta, cfg.rope_orig_max, cfg.beta_fast, cfg.beta_slow)
        if high == low:
            high = low + 0.001
        ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
        f = f / cfg.rope_factor * ramp + f * (1.0 - ramp)
    return f


def yarn_get_mscale(factor, m):
    """0.1 * m * ln(factor) + 1 for factor > 1, else 1."""
    return 0.1 * m * math.log(factor) + 1.0 if factor > 1.0 else 1.0


def rope_cos_sin(cfg, positions, dim=None):
    """cos, sin float64 [T, dim/2] for angles p * f_i'.

    CHOICE: cos/sin carry the factor mscale(factor, mscale) / mscale(factor, mscale_all_dim), which is
    exactly 1 for the real config (mscale == mscale_all_dim == 1), as MODEL.md notes.
    """
    f = rope_frequencies(cfg, dim)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * f[None, :]
    amp = 1.0
    if cfg.yarn:
        amp = yarn_get_mscale(cfg.rope_factor, cfg.rope_mscale) / yarn_get_mscale(
            cfg.rope_factor, cfg.rope_mscale_all_dim)
    return np.cos(ang) * amp, np.sin(ang) * amp


def _bcast(t, x):
    """cos/sin [T, n] -> shape broadcastable against x [T, ..., 2n]."""
    return t.reshape((t.shape[0],) + (1,) * (x.ndim - 2) + (t.shape[1],))


def rope_interleaved(x, cos, sin):
    """MLA rope: pairs (x[2i], x[2i+1]) rotated by angle i. x [T, ..., d], cos/sin [T, d/2]."""
    c, s = _bcast(cos, x), _bcast(sin, x)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = a * s + b * c
    return out


def rope_half(x, cos, sin):
    """Indexer rope, NON-interleaved: pairs (x[i], x[i + d/2]) rotated by angle i."""
    c, s = _bcast(cos, x), _bcast(sin, x)
    n = x.shape[-1] // 2
    a, b = x[..., :n], x[..., n:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


# ==============================================================================================
# Lightning indexer (MODEL.md "DeepSeek Sparse Attention")
# ==============================================================================================

def hadamard(n):
    """Orthonormal Sylvester-Hadamard matrix [n, n]: H[i, j] = (-1)^popcount(i & j) / sqrt(n).

    CHOICE: natural (Sylvester) row order, as a fast Walsh-Hadamard transform produces. H is symmetric,
    so rotating a row vector is x @ H. Without FP8 rounding the order does not matter at all
    (q . k is invariant under any orthonormal rotation applied to both).
    """
    if n < 1 or n & (n - 1):
        raise ValueError("Hadamard size %d is not a power of two" % n)
    i = np.arange(n)
    bits = np.bitwise_and(i[:, None], i[None, :])
    pop = np.zeros_like(bits)
    while np.any(bits):
        pop += bits & 1
        bits >>= 1
    return np.where(pop % 2 == 0, 1.0, -1.0) / math.sqrt(n)


def _ceil_pow2(s):
    """2^ceil(log2(s)) for positive float64 s, exactly (via frexp: s = m * 2^e, 0.5 <= m < 1)."""
    m, e = np.frexp(s)
    e = np.where(m == 0.5, e - 1, e)
    return np.ldexp(1.0, e)


def fp8_act_round(x, ue8m0, block=128):
    """Round x [..., n] to FP8 e4m3 with one scale per block of `block` values along the last axis.

    scale = max(amax, 1e-4) / 448, or with ue8m0 the power of two 2^ceil(log2(max(amax, 1e-4) / 448));
    returns the dequantized values fp8(clamp(x / scale, -448, 448)) * scale (round to nearest even).
    """
    out = np.empty_like(x)
    n = x.shape[-1]
    for b0 in range(0, n, block):
        seg = x[..., b0:b0 + block]
        amax = np.maximum(np.max(np.abs(seg), axis=-1, keepdims=True), 1e-4)
        s = amax / 448.0
        if ue8m0:
            s = _ceil_pow2(s)
        out[..., b0:b0 + block] = round_to_fp8_e4m3(np.clip(seg / s, -448.0, 448.0)) * s
    return out


def indexer_scores(x, qr, w, cfg, cos, sin, fp8=False, ue8m0=False):
    """Index scores I [T, T] (query t, key s; not yet masked).

    x  [T, D]   attention input (after input_layernorm);  qr [T, q_lora_rank] (after q_a_layernorm)
    w  dict of dequantized weights: wq_b [nI*dI, q_lora], wk [dI, D], k_norm_w/k_norm_b [dI],
       weights_proj [nI, D]
    q_I = wq_b(qr) -> [T, nI, dI]; first rope dims roped NON-interleaved
    k_I = LayerNorm(wk(x)) (eps 1e-6) -> [T, dI]; first rope dims roped NON-interleaved
    q_I, k_I <- Hadamard-rotated (scale dI^-0.5); optionally FP8-rounded per 128-vector
    wts = weights_proj(x) * nI^-0.5 * dI^-0.5                     [T, nI]
    I(t, s) = sum_h wts[t, h] * relu(q_I[t, h] . k_I[s])
    """
    T = x.shape[0]
    nI, dI, dr = cfg.index_n_heads, cfg.index_head_dim, cfg.qk_rope_head_dim
    q = (qr @ w["wq_b"].T).reshape(T, nI, dI)                                  # [T, nI, dI]
    q = np.concatenate([rope_half(q[..., :dr], cos, sin), q[..., dr:]], axis=-1)
    k = layer_norm(x @ w["wk"].T, w["k_norm_w"], w["k_norm_b"], 1e-6)          # [T, dI]
    k = np.concatenate([rope_half(k[..., :dr], cos, sin), k[..., dr:]], axis=-1)
    H = hadamard(dI)
    q = q @ H
    k = k @ H
    if fp8:
        q = fp8_act_round(q, ue8m0)
        k = fp8_act_round(k, ue8m0)
    wts = (x @ w["weights_proj"].T) * nI ** -0.5 * dI ** -0.5                 # [T, nI]
    I = np.empty((T, T))
    step = max(1, (1 << 22) // max(1, T * nI))                                    # bound memory
    for t0 in range(0, T, step):
        qk = np.einsum("thd,sd->tsh", q[t0:t0 + step], k)                     # [t, T, nI]
        I[t0:t0 + step] = np.einsum("tsh,th->ts", np.maximum(qk, 0.0), wts[t0:t0 + step])
    return I


def indexer_select(I, topk):
    """Causal top-k selection.

    For each query t keep the min(topk, t+1) positions s <= t with the largest I[t, s]; ties are broken
    toward the LOWER position (a stable sort on -I). Returns (allowed [T, T] bool, list of sorted
    position arrays).
    """
    T = I.shape[0]
    causal = np.tril(np.ones((T, T), dtype=bool))
    masked = np.where(causal, I, NEG_INF)
    order = np.argsort(-masked, axis=1, kind="stable")                          # best first
    allowed = np.zeros((T, T), dtype=bool)
    selection = []
    for t in range(T):
        keep = np.sort(order[t, :min(topk, t + 1)])
        allowed[t, keep] = True
        selection.append(keep)
    return allowed, selection


# ==============================================================================================
# MLA attention, both forms (MODEL.md "MLA attention")
# ==============================================================================================

def mla_attention_full(q_nope, q_pe, c, k_pe, wkv_b, v_head_dim, scale, allowed):
    """Full (MHA) form.

    q_nope [T, H, dn], q_pe [T, H, dr], c [T, r] (normed latent), k_pe [T, dr] (roped),
    wkv_b [H*(dn+dv), r], allowed [T, T] bool (causal & index mask).
    Returns o [T, H, dv] and probabilities p [H, T, T].
    """
    T, H, dn = q_nope.shape
    kv = (c @ wkv_b.T).reshape(T, H, dn + v_head_dim)                          # [T, H, dn+dv]
    k_nope, v = kv[..., :dn], kv[..., dn:]
    scores = (np.einsum("thd,shd->hts", q_nope, k_nope)
              + np.einsum("thd,sd->hts", q_pe, k_pe)) * scale                   # [H, T, T]
    scores = np.where(allowed[None], scores, NEG_INF)
    p = softmax_rows(scores)
    o = np.einsum("hts,shd->thd", p, v)                                         # [T, H, dv]
    return o, p


def mla_attention_absorbed(q_nope, q_pe, c, k_pe, wkv_b, v_head_dim, scale, allowed):
    """Absorbed (MQA) form: same arguments and results as mla_attention_full.

    W = wkv_b viewed [H][dn+dv][r]; q_lat[h] = q_nope[h] . W[h][:dn] (an r-vector);
    score = (q_lat . c_s + q_pe . k_pe_s) * scale; o_lat = sum_s p_s c_s; o[h] = W[h][dn:] . o_lat.
    """
    T, H, dn = q_nope.shape
    r = c.shape[1]
    W = wkv_b.reshape(H, dn + v_head_dim, r)
    q_lat = np.einsum("thd,hdr->thr", q_nope, W[:, :dn, :])                    # [T, H, r]
    scores = (np.einsum("thr,sr->hts", q_lat, c)
              + np.einsum("thd,sd->hts", q_pe, k_pe)) * scale                   # [H, T, T]
    scores = np.where(allowed[None], scores, NEG_INF)
    p = softmax_rows(scores)
    o_lat = np.einsum("hts,sr->thr", p, c)                                      # [T, H, r]
    o = np.einsum("thr,hvr->thv", o_lat, W[:, dn:, :])                          # [T, H, dv]
    return o, p


# ==============================================================================================
# MoE routing (MODEL.md "MoE layer (noaux_tc routing)")
# ==============================================================================================

def route_noaux_tc(gate_logits, bias, n_group, topk_group, top_k, norm_topk_prob, scaling):
    """Group-limited sigmoid routing.

    gate_logits [T, E], bias [E] (e_score_correction_bias).
    s = sigmoid(logits); b = s + bias (used ONLY for choosing); group score = sum of the two largest b
    of the group; keep the topk_group best groups; choose the top_k largest b among kept experts;
    weights = s[idx] / sum(s[idx]) * scaling (no normalization if norm_topk_prob is false).
    Ties at every step go to the LOWER index (stable sorts).
    Returns idx [T, top_k] (in choice order) and weights [T, top_k].
    """
    T, E = gate_logits.shape
    s = sigmoid(gate_logits)                                                    # [T, E]
    b = s + bias[None, :]
    if n_group > 1:
        g = b.reshape(T, n_group, E // n_group)
        top2 = -np.sort(-g, axis=-1)[..., :2]
        gscore = top2.sum(axis=-1)                                              # [T, n_group]
        keep_groups = np.argsort(-gscore, axis=1, kind="stable")[:, :topk_group]
        gmask = np.zeros((T, n_group), dtype=bool)
        np.put_along_axis(gmask, keep_groups, True, axis=1)
        b = np.where(np.repeat(gmask, E // n_group, axis=1), b, NEG_INF)
    idx = np.argsort(-b, axis=1, kind="stable")[:, :top_k]                      # [T, top_k]
    wts = np.take_along_axis(s, idx, axis=1)
    if norm_topk_prob:
        wts = wts / wts.sum(axis=1, keepdims=True)
    return idx, wts * scaling


# ==============================================================================================
# The model
# ==============================================================================================

class Model:
    """Float64 reference model over a checkpoint directory (config.json + safetensors).

    Model(checkpoint_dir, indexer_fp8=False, mla_form="full", config_overrides=None)

    indexer_fp8: False (default) computes the lightning indexer's scores exactly in float64 (no
        rounding anywhere). True rounds the Hadamard-rotated indexer q and k to FP8 e4m3 with one scale
        per 128-vector, as the public reference code does: scale amax/448 (amax floored at 1e-4), or
        the power of two 2^ceil(log2(amax/448)) when config.json's quantization_config.scale_fmt is
        "ue8m0". This changes which tokens are selected when scores are close.
    mla_form: "full" (MHA form, default) or "absorbed" (MQA form); both give the same results.
    config_overrides: dict merged over config.json (tests only).

    All weights of layers 0 .. num_hidden_layers-1 are loaded and dequantized to float64 up front
    (meant for small test checkpoints); the MTP layer (index num_hidden_layers) is never read.
    """

    def __init__(self, checkpoint_dir, indexer_fp8=False, mla_form="full", config_overrides=None):
        if mla_form not in ("full", "absorbed"):
            raise ValueError("mla_form must be 'full' or 'absorbed'")
        self.cfg = cfg = load_config(checkpoint_dir, config_overrides)
        self.indexer_fp8 = bool(indexer_fp8)
        self.indexer_ue8m0 = cfg.scale_fmt == "ue8m0"
        self.mla_form = mla_form
        self.ckpt = ck = Checkpoint(checkpoint_dir, cfg.weight_block_size)

        D, V = cfg.hidden_size, cfg.vocab_size
        H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        r_kv = cfg.kv_lora_rank
        self.embed = ck.weight("model.embed_tokens.weight", (V, D))           # [V, D]
        self.norm = ck.weight("model.norm.weight", (D,))
        self.lm_head = ck.weight("lm_head.weight", (V, D))                    # [V, D]

        # softmax scale = qk_head_dim^-0.5 * mscale^2, mscale = 0.1 * mscale_all_dim * ln(factor) + 1
        self.softmax_scale = cfg.qk_head_dim ** -0.5
        if cfg.yarn and cfg.rope_mscale_all_dim:
            m = yarn_get_mscale(cfg.rope_factor, cfg.rope_mscale_all_dim)
            self.softmax_scale *= m * m

        self.layers = []
        for L in range(cfg.num_hidden_layers):
            p = "model.layers.%d." % L
            a = p + "self_attn."
            lw = {
                "input_layernorm": ck.weight(p + "input_layernorm.weight", (D,)),
                "post_attention_layernorm": ck.weight(p + "post_attention_layernorm.weight", (D,)),
                "kv_a_proj_with_mqa": ck.weight(a + "kv_a_proj_with_mqa.weight", (r_kv + dr, D)),
                "kv_a_layernorm": ck.weight(a + "kv_a_layernorm.weight", (r_kv,)),
                "kv_b_proj": ck.weight(a + "kv_b_proj.weight", (H * (dn + dv), r_kv)),
                "o_proj": ck.weight(a + "o_proj.weight", (D, H * dv)),
            }
            if cfg.q_lora_rank is not None:
                rq = cfg.q_lora_rank
                lw["q_a_proj"] = ck.weight(a + "q_a_proj.weight", (rq, D))
                lw["q_a_layernorm"] = ck.weight(a + "q_a_layernorm.weight", (rq,))
                lw["q_b_proj"] = ck.weight(a + "q_b_proj.weight", (H * cfg.qk_head_dim, rq))
            else:
                lw["q_proj"] = ck.weight(a + "q_proj.weight", (H * cfg.qk_head_dim, D))
            if cfg.has_indexer:
                ix = a + "indexer."
                nI, dI = cfg.index_n_heads, cfg.index_head_dim
                lw["indexer"] = {
                    "wq_b": ck.weight(ix + "wq_b.weight", (nI * dI, cfg.q_lora_rank)),
                    "wk": ck.weight(ix + "wk.weight", (dI, D)),
                    "k_norm_w": ck.weight(ix + "k_norm.weight", (dI,)),
                    "k_norm_b": ck.weight(ix + "k_norm.bias", (dI,)),
                    "weights_proj": ck.weight(ix + "weights_proj.weight", (nI, D)),
                }
            m = p + "mlp."
            if cfg.is_moe_layer(L):
                E, I = cfg.n_routed_experts, cfg.moe_intermediate_size
                lw["gate"] = ck.weight(m + "gate.weight", (E, D))
                lw["gate_bias"] = ck.weight(m + "gate.e_score_correction_bias", (E,))
                lw["experts"] = [self._swiglu_weights(m + "experts.%d." % e, D, I) for e in range(E)]
                if cfg.n_shared_experts:
                    lw["shared"] = self._swiglu_weights(m + "shared_experts.", D, I * cfg.n_shared_experts)
            else:
                lw["mlp"] = self._swiglu_weights(m, D, cfg.intermediate_size)
            self.layers.append(lw)

    def _swiglu_weights(self, prefix, D, I):
        ck = self.ckpt
        return (ck.weight(prefix + "gate_proj.weight", (I, D)),                  # [I, D]
                ck.weight(prefix + "up_proj.weight", (I, D)),                    # [I, D]
                ck.weight(prefix + "down_proj.weight", (D, I)))                  # [D, I]

    # ------------------------------------------------------------------------------------------

    @staticmethod
    def swiglu(x, weights):
        """down(silu(gate(x)) * up(x)); x [N, D] -> [N, D]."""
        wg, wu, wd = weights
        return (silu(x @ wg.T) * (x @ wu.T)) @ wd.T

    def attention(self, L, x, cos, sin):
        """MLA (+ indexer) for layer L. x [T, D] normed input. Returns out [T, D], selection or None."""
        cfg, lw = self.cfg, self.layers[L]
        T = x.shape[0]
        H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        r_kv = cfg.kv_lora_rank

        if cfg.q_lora_rank is not None:
            qr = rms_norm(x @ lw["q_a_proj"].T, lw["q_a_layernorm"], cfg.rms_norm_eps)   # [T, rq]
            q = (qr @ lw["q_b_proj"].T).reshape(T, H, dn + dr)                           # [T, H, 192]
        else:
            qr = None
            q = (x @ lw["q_proj"].T).reshape(T, H, dn + dr)
        q_nope, q_pe = q[..., :dn], rope_interleaved(q[..., dn:], cos, sin)            # [T,H,dn] [T,H,dr]

        kv = x @ lw["kv_a_proj_with_mqa"].T                                             # [T, r_kv + dr]
        c = rms_norm(kv[:, :r_kv], lw["kv_a_layernorm"], cfg.rms_norm_eps)              # [T, r_kv]
        k_pe = rope_interleaved(kv[:, r_kv:], cos, sin)                                 # [T, dr]

        if cfg.has_indexer:
            I = indexer_scores(x, qr, lw["indexer"], cfg, cos, sin,
                               fp8=self.indexer_fp8, ue8m0=self.indexer_ue8m0)
            allowed, selection = indexer_select(I, cfg.index_topk)
        else:
            allowed, selection = np.tril(np.ones((T, T), dtype=bool)), None

        attn = mla_attention_full if self.mla_form == "full" else mla_attention_absorbed
        o, _ = attn(q_nope, q_pe, c, k_pe, lw["kv_b_proj"], dv, self.softmax_scale, allowed)
        return o.reshape(T, H * dv) @ lw["o_proj"].T, selection                          # [T, D]

    def ffn(self, L, x):
        """Dense SwiGLU or MoE for layer L. x [T, D]. Returns out [T, D], chosen experts [T, k] or None."""
        cfg, lw = self.cfg, self.layers[L]
        if "mlp" in lw:
            return self.swiglu(x, lw["mlp"]), None
        idx, wts = route_noaux_tc(x @ lw["gate"].T, lw["gate_bias"], cfg.n_group, cfg.topk_group,
                                  cfg.num_experts_per_tok, cfg.norm_topk_prob, cfg.routed_scaling_factor)
        y = np.zeros_like(x)
        for e in np.unique(idx):
            rows, slot = np.nonzero(idx == e)                                   # tokens routed to e
            y[rows] += wts[rows, slot][:, None] * self.swiglu(x[rows], lw["experts"][e])
        if "shared" in lw:
            y += self.swiglu(x, lw["shared"])                                   # unweighted
        return y, np.sort(idx, axis=1)

    # ------------------------------------------------------------------------------------------

    def check_tokens(self, token_ids):
        t = np.asarray(token_ids)
        if t.ndim != 1 or t.size == 0:
            raise ValueError("token_ids must be a non-empty 1-D sequence")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError("token_ids must be integers")
        if t.min() < 0 or t.max() >= self.cfg.vocab_size:
            raise ValueError("token id out of range [0, %d)" % self.cfg.vocab_size)
        return t.astype(np.int64)

    def forward(self, token_ids):
        """Full causal forward over positions 0 .. T-1.

        Returns (logits [T, vocab] float64,
                 routing {layer: int64 [T, top_k] chosen experts, each row sorted ascending} (MoE layers),
                 indexer_selection {layer: list of T int64 arrays of selected positions, ascending}
                 (indexer layers only; empty dict for a model without indexer)).
        """
        cfg = self.cfg
        tokens = self.check_tokens(token_ids)
        T = tokens.shape[0]
        cos, sin = rope_cos_sin(cfg, np.arange(T))                              # [T, dr/2]
        h = self.embed[tokens]                                                  # [T, D]
        routing, selection = {}, {}
        for L in range(cfg.num_hidden_layers):
            lw = self.layers[L]
            a, sel = self.attention(L, rms_norm(h, lw["input_layernorm"], cfg.rms_norm_eps), cos, sin)
            h = h + a
            f, route = self.ffn(L, rms_norm(h, lw["post_attention_layernorm"], cfg.rms_norm_eps))
            h = h + f
            if route is not None:
                routing[L] = route
            if sel is not None:
                selection[L] = sel
        logits = rms_norm(h, self.norm, cfg.rms_norm_eps) @ self.lm_head.T     # [T, V]
        return logits, routing, selection

    def greedy(self, token_ids, n):
        """n greedy tokens after the prompt (argmax, ties to the lower id); re-runs the full forward."""
        ids = [int(t) for t in self.check_tokens(token_ids)]
        out = []
        for _ in range(int(n)):
            logits, _, _ = self.forward(ids)
            nxt = int(np.argmax(logits[-1]))
            out.append(nxt)
            ids.append(nxt)
        return out
