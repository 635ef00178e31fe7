"""Small, independent safetensors reader for the float64 reference (tests/ref).

Written from docs/MODEL.md section 2, not from any other implementation.

File layout (one shard):
    [0, 8)          u64 little-endian N = length of the JSON header
    [8, 8+N)        UTF-8 JSON: {"name": {"dtype", "shape", "data_offsets": [begin, end)}, ...,
                                 optional "__metadata__": {str: str}}
    [8+N, ...)      data; data_offsets are relative to the data start 8+N (no alignment)

A checkpoint directory holds either model.safetensors.index.json
({"metadata": {...}, "weight_map": {tensor name: shard file name}}) with its shards, or one
model.safetensors.

Supported dtypes: F8_E4M3 (torch float8_e4m3fn), BF16, F32 (plus F16/F64 for convenience).
Every value is returned as float64 (exact: all of these embed exactly in float64).

FP8 block dequantization (MODEL.md section 2): an FP8 weight W [out, in] named "<prefix>.weight" has
"<prefix>.weight_scale_inv" F32 [ceil(out/128), ceil(in/128)], and
    W_real[i, j] = fp8(W[i, j]) * scale_inv[i // 128, j // 128]      (MULTIPLY; ragged edge blocks).
A weight stored as BF16/F32 without a scale tensor is used as is.
"""

import json
import math
import os
import struct

import numpy as np

__all__ = [
    "SafetensorsError", "Checkpoint", "SafetensorsFile",
    "fp8_e4m3_table", "decode_fp8_e4m3", "decode_bf16", "encode_bf16",
    "encode_fp8_e4m3", "dequantize_blocks", "write_safetensors", "DTYPE_SIZES",
]


class SafetensorsError(Exception):
    """Bad or inconsistent checkpoint data; the message names the file and the tensor."""


DTYPE_SIZES = {"F8_E4M3": 1, "BF16": 2, "F16": 2, "F32": 4, "F64": 8}


# ----------------------------------------------------------------------------------------------
# Element decoders
# ----------------------------------------------------------------------------------------------

def _fp8_e4m3_value(code):
    """Value of one e4m3fn byte from its bit fields: 1 sign, 4 exponent (bias 7), 3 mantissa.

    e == 0: subnormal, (m / 8) * 2^(1 - 7) = m * 2^-9.  e > 0: (1 + m / 8) * 2^(e - 7).
    0x7F and 0xFF (e == 15, m == 7) are NaN; there are no infinities (max finite 448).
    """
    s = (code >> 7) & 1
    e = (code >> 3) & 0xF
    m = code & 0x7
    if e == 15 and m == 7:
        return float("nan")
    if e == 0:
        mag = (m / 8.0) * 2.0 ** (1 - 7)
    else:
        mag = (1.0 + m / 8.0) * 2.0 ** (e - 7)
    return -mag if s else mag


_FP8_TABLE = np.array([_fp8_e4m3_value(c) for c in range(256)], dtype=np.float64)
_FP8_TABLE.setflags(write=False)


def fp8_e4m3_table():
    """float64 [256]: the value of every e4m3fn code (read-only)."""
    return _FP8_TABLE


def decode_fp8_e4m3(raw_u8):
    """uint8 array -> float64 array of the same shape."""
    return _FP8_TABLE[raw_u8]


def decode_bf16(raw_u16):
    """uint16 array (bf16 bit patterns) -> float64 (exact: bf16 is the top half of an f32)."""
    return (raw_u16.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def encode_bf16(x):
    """float array -> uint16 bf16 bit patterns, round to nearest even (for writing test files)."""
    f = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    u = f.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    out = rounded.astype(np.uint16)
    nan = np.isnan(f)
    out[nan] = 0x7FC0
    return out


# Positive finite e4m3 values in code order 0x00..0x7E; they increase monotonically.
_FP8_POS = _FP8_TABLE[:0x7F].copy()


def encode_fp8_e4m3(x):
    """float array -> uint8 e4m3fn codes, round to nearest, ties to even code, saturating at +-448.

    (Used for writing test checkpoints and for the optional FP8 rounding of indexer q/k; inputs are
    expected to be already clamped to [-448, 448] there.)  NaN -> 0x7F.
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.minimum(np.abs(x), 448.0)
    hi = np.searchsorted(_FP8_POS, a, side="left")          # first code with value >= a
    hi = np.clip(hi, 0, 0x7E)
    lo = np.clip(hi - 1, 0, 0x7E)
    d_hi = _FP8_POS[hi] - a
    d_lo = a - _FP8_POS[lo]
    pick_lo = (d_lo < d_hi) | ((d_lo == d_hi) & (lo % 2 == 0) & (lo != hi))
    code = np.where(pick_lo, lo, hi).astype(np.uint8)
    code = code | np.where(np.signbit(x), 0x80, 0).astype(np.uint8)
    code[np.isnan(x)] = 0x7F
    return code


def round_to_fp8_e4m3(x):
    """float64 -> nearest e4m3fn value (as float64), ties to even, saturating."""
    return decode_fp8_e4m3(encode_fp8_e4m3(x))


def dequantize_blocks(w, scale_inv, block=(128, 128)):
    """w float64 [out, in], scale_inv [ceil(out/bo), ceil(in/bi)] -> w * scale per block."""
    bo, bi = block
    out_dim, in_dim = w.shape
    expect = (math.ceil(out_dim / bo), math.ceil(in_dim / bi))
    if tuple(scale_inv.shape) != expect:
        raise ValueError("scale shape %s, expected %s for weight %s with blocks %s"
                         % (tuple(scale_inv.shape), expect, tuple(w.shape), block))
    full = np.repeat(np.repeat(scale_inv, bo, axis=0), bi, axis=1)[:out_dim, :in_dim]
    return w * full


# ----------------------------------------------------------------------------------------------
# One .safetensors file
# ----------------------------------------------------------------------------------------------

class SafetensorsFile:
    """Parsed header of one shard; tensors are read on demand."""

    def __init__(self, path):
        self.path = path
        try:
            self.file_size = os.path.getsize(path)
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) != 8:
                    raise SafetensorsError("%s: file shorter than the 8-byte header length" % path)
                (n,) = struct.unpack("<Q", head)
                if n > self.file_size - 8:
                    raise SafetensorsError("%s: header length %d runs past the end of the file (%d bytes)"
                                           % (path, n, self.file_size))
                text = f.read(n)
        except OSError as e:
            raise SafetensorsError("%s: cannot read: %s" % (path, e))
        try:
            header = json.loads(text.decode("utf-8"), object_pairs_hook=self._no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise SafetensorsError("%s: header is not valid JSON: %s" % (path, e))
        if not isinstance(header, dict):
            raise SafetensorsError("%s: header is not a JSON object" % path)
        self.data_start = 8 + n
        data_len = self.file_size - self.data_start
        self.metadata = header.pop("__metadata__", None) or {}
        self.tensors = {}
        for name, info in header.items():
            try:
                dtype = info["dtype"]
                shape = [int(d) for d in info["shape"]]
                begin, end = (int(v) for v in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise SafetensorsError("%s: tensor %s: malformed entry %r" % (path, name, info))
            if dtype not in DTYPE_SIZES:
                raise SafetensorsError("%s: tensor %s: unsupported dtype %s" % (path, name, dtype))
            if any(d < 0 for d in shape):
                raise SafetensorsError("%s: tensor %s: negative dimension in shape %s" % (path, name, shape))
            if not (0 <= begin <= end <= data_len):
                raise SafetensorsError("%s: tensor %s: data_offsets [%d, %d) outside the data (%d bytes)"
                                       % (path, name, begin, end, data_len))
            nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
            if end - begin != nbytes:
                raise SafetensorsError("%s: tensor %s: %s %s needs %d bytes, data_offsets give %d"
                                       % (path, name, dtype, shape, nbytes, end - begin))
            self.tensors[name] = (dtype, tuple(shape), begin, end)

    @staticmethod
    def _no_duplicates(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise ValueError("duplicate key %r" % k)
            d[k] = v
        return d

    def read(self, name):
        """Tensor `name` decoded to float64 with its shape."""
        dtype, shape, begin, end = self.tensors[name]
        with open(self.path, "rb") as f:
            f.seek(self.data_start + begin)
            raw = f.read(end - begin)
        if len(raw) != end - begin:
            raise SafetensorsError("%s: tensor %s: file truncated" % (self.path, name))
        if dtype == "F8_E4M3":
            v = decode_fp8_e4m3(np.frombuffer(raw, dtype=np.uint8))
        elif dtype == "BF16":
            v = decode_bf16(np.frombuffer(raw, dtype="<u2"))
        elif dtype == "F16":
            v = np.frombuffer(raw, dtype="<f2").astype(np.float64)
        elif dtype == "F32":
            v = np.frombuffer(raw, dtype="<f4").astype(np.float64)
        else:  # F64
            v = np.frombuffer(raw, dtype="<f8").astype(np.float64)
        return v.reshape(shape)


# ----------------------------------------------------------------------------------------------
# A checkpoint directory
# ----------------------------------------------------------------------------------------------

class Checkpoint:
    """All tensors of a checkpoint directory (index.json + shards, or one model.safetensors)."""

    def __init__(self, directory, block=(128, 128)):
        self.directory = directory
        self.block = tuple(block)
        self._files = {}
        self.where = {}  # tensor name -> shard file name
        index = os.path.join(directory, "model.safetensors.index.json")
        single = os.path.join(directory, "model.safetensors")
        if os.path.exists(index):
            try:
                with open(index, "r", encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise SafetensorsError("%s: bad index: %s" % (index, e))
            if not isinstance(weight_map, dict):
                raise SafetensorsError("%s: weight_map is not an object" % index)
            for name, shard in weight_map.items():
                self.where[name] = shard
            for shard in sorted(set(self.where.values())):
                path = os.path.join(directory, shard)
                if not os.path.exists(path):
                    raise SafetensorsError("%s: shard %s named in the index is missing" % (index, shard))
                self._files[shard] = SafetensorsFile(path)
            for name, shard in self.where.items():
                if name not in self._files[shard].tensors:
                    raise SafetensorsError("%s: tensor %s is not in shard %s as the index says"
                                           % (index, name, shard))
        elif os.path.exists(single):
            sf = SafetensorsFile(single)
            self._files["model.safetensors"] = sf
            for name in sf.tensors:
                self.where[name] = "model.safetensors"
        else:
            raise SafetensorsError("%s: neither model.safetensors.index.json nor model.safetensors found"
                                   % directory)

    def __contains__(self, name):
        return name in self.where

    def names(self):
        return list(self.where)

    def info(self, name):
        """(dtype, shape) of a stored tensor."""
        dtype, shape, _, _ = self._file(name).tensors[name]
        return dtype, shape

    def _file(self, name):
        if name not in self.where:
            raise SafetensorsError("%s: tensor %s not found in the checkpoint" % (self.directory, name))
        return self._files[self.where[name]]

    def raw(self, name):
        """Stored tensor decoded to float64, no dequantization."""
        return self._file(name).read(name)

    def weight(self, name, shape=None):
        """Tensor `name` as real float64 values.

        FP8 tensors are multiplied by their block scales (`<prefix>.weight_scale_inv` for
        `<prefix>.weight`). If `shape` is given, the stored shape must match it.
        """
        sf = self._file(name)
        dtype, stored_shape, _, _ = sf.tensors[name]
        if shape is not None and tuple(stored_shape) != tuple(shape):
            raise SafetensorsError("%s: tensor %s has shape %s, expected %s"
                                   % (sf.path, name, list(stored_shape), list(shape)))
        w = sf.read(name)
        if name.endswith(".weight"):
            scale_name = name[:-len(".weight")] + ".weight_scale_inv"
        else:
            scale_name = name + "_scale_inv"
        if dtype == "F8_E4M3":
            if scale_name not in self.where:
                raise SafetensorsError("%s: FP8 tensor %s has no %s" % (sf.path, name, scale_name))
            if w.ndim != 2:
                raise SafetensorsError("%s: FP8 tensor %s is not 2-D" % (sf.path, name))
            scale = self.raw(scale_name)
            try:
                w = dequantize_blocks(w, scale, self.block)
            except ValueError as e:
                raise SafetensorsError("%s: tensor %s: %s" % (self._file(scale_name).path, scale_name, e))
        elif scale_name in self.where:
            raise SafetensorsError("%s: tensor %s is %s but has a %s" % (sf.path, name, dtype, scale_name))
        if not np.all(np.isfinite(w)):
            raise SafetensorsError("%s: tensor %s holds NaN or infinite values" % (sf.path, name))
        return w


# ----------------------------------------------------------------------------------------------
# Writer (for self-tests and synthetic test files only)
# ----------------------------------------------------------------------------------------------

def write_safetensors(path, tensors, metadata=None):
    """Write {name: (dtype, shape, raw little-endian bytes)} as one safetensors file."""
    header = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    blobs = []
    for name, (dtype, shape, data) in tensors.items():
        data = bytes(data)
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header).encode("utf-8")
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
