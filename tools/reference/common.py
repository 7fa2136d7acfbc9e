"""Helpers shared by the reference-fixture generators in tools/reference/.

* perturb_constants: the constant-tensor perturbation rule of reference-parity.md section 2;
* save_reference: writes a `<name>.reference.safetensors` (F32 / I64, metadata {seed, generator});
* maxdiff, sha256, dir_size: small utilities.

Added for voxtral_fixtures.py (the same formulas as the copies in voxtral_realtime_fixtures.py,
which keeps its own):
* standard_audio: the 3 s synthetic input on the 16-bit grid;
* write_synthetic_tekken, MISTRAL_SPECIAL_NAMES: a small synthetic tekken.json for mistral-common;
* interleave_rows / rotate_half_rows: Mistral interleaved-pair <-> HF rotate-half q/k rows;
* rope_interleaved / rope_rotate_half: the two RoPE layouts, theta given explicitly;
* top2_gaps: smallest top-1 / top-2 logit gap of a [steps, vocab] tensor.

Imported by whisper_fixtures.py, voxtral_realtime_fixtures.py and voxtral_fixtures.py (run them
as scripts from anywhere: they put this directory on sys.path).
"""

import base64
import hashlib
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file


def perturb_constants(model, seed=0):
    """reference-parity.md section 2: constant float tensors -> c(1+0.1N) or 0.05N.

    Uses its own generator (seed 0 by default), visits parameters then buffers in
    registration order, and skips tensors whose storage was already seen (tied / shared).
    Returns the number of perturbed tensors."""
    g = torch.Generator().manual_seed(seed)
    seen = set()
    n = 0
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for _name, t in tensors:
            if not t.is_floating_point() or t.numel() == 0:
                continue
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:  # tied / shared storage
                continue
            seen.add(ptr)
            flat = t.reshape(-1)
            c = flat[0].item()
            if not bool((flat == flat[0]).all()):
                continue
            noise = torch.randn(t.shape, generator=g, dtype=torch.float32).to(t.dtype)
            if abs(c) >= 1e-3:
                t.copy_(c * (1.0 + 0.1 * noise))
            else:
                t.copy_(0.05 * noise)
            n += 1
    return n


def save_reference(ref, path, seed, generator):
    """Save a dict of tensors as safetensors (F32 / I64 only) with {seed, generator} metadata.
    Returns the dict of contiguous copies that was written."""
    tensors = {}
    for k, v in ref.items():
        v = v.detach().contiguous()
        assert v.dtype in (torch.float32, torch.int64), (k, v.dtype)
        tensors[k] = v.clone()
    save_file(tensors, path, metadata={"seed": str(seed), "generator": generator})
    return tensors


def maxdiff(a, b):
    return float((a.detach().double() - b.detach().double()).abs().max().item())


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def dir_size(p):
    if os.path.isfile(p):
        return os.path.getsize(p)
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(p) for f in fs)


# --------------------------------------------------------------------------------------
# helpers added for voxtral_fixtures.py (pure additions; nothing above depends on them)


def standard_audio(sr=16000):
    """3 s: 0.5 sin(2 pi 440 t) + 0.3 linear chirp sin(2 pi (200 t + 700 t^2)) + 0.01 N(0,1)
    (numpy default_rng(0)), rounded to the 16-bit grid (round(x * 32768) / 32768, clipped),
    float32. Identical to voxtral_realtime_fixtures.standard_audio."""
    t = np.arange(3 * sr, dtype=np.float64) / sr
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.3 * np.sin(2 * np.pi * (200.0 * t + 700.0 * t * t))
    x = x + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    x = np.clip(np.round(x * 32768.0), -32768, 32767) / 32768.0
    return x.astype(np.float32)


# mistral-common's Tekkenizer.DEPRECATED_SPECIAL_TOKENS (ranks 0..19)
MISTRAL_SPECIAL_NAMES = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]",
    6: "[/AVAILABLE_TOOLS]", 7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]",
    10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]", 13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]",
    16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]", 19: "[TOOL_CONTENT]",
}


def write_synthetic_tekken(path, extra_special, audio, n_vocab_entries=1100, vocab_size=2048,
                           n_special=1000, version="v7"):
    """Write a small tekken.json: config {pattern of mistral-common's bundled tekken_240911.json,
    num_vocab_tokens n_vocab_entries, default_vocab_size vocab_size, default_num_special_tokens
    n_special, version}; vocab = the bundled file's first n_vocab_entries entries (ranks 0..255
    are the bytes); special_tokens = n_special control tokens named MISTRAL_SPECIAL_NAMES,
    then extra_special {rank: name}, else "<SPECIAL_N>"; "audio" = audio (omitted if None).
    Returns the document."""
    import mistral_common

    bundled_path = os.path.join(os.path.dirname(mistral_common.__file__), "data", "tekken_240911.json")
    with open(bundled_path, encoding="utf-8") as f:
        bundled = json.load(f)
    vocab = bundled["vocab"][:n_vocab_entries]
    for i, v in enumerate(vocab):
        assert v["rank"] == i
        if i < 256:
            assert base64.b64decode(v["token_bytes"]) == bytes([i])
    names = dict(MISTRAL_SPECIAL_NAMES)
    names.update(extra_special)
    specials = [{"rank": i, "token_str": names.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                for i in range(n_special)]
    doc = {
        "config": {
            "pattern": bundled["config"]["pattern"],
            "num_vocab_tokens": n_vocab_entries,
            "default_vocab_size": vocab_size,
            "default_num_special_tokens": n_special,
            "version": version,
        },
        "vocab": vocab,
        "special_tokens": specials,
    }
    if audio is not None:
        doc["audio"] = audio
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False, separators=(",", ":"))
        f.write("\n")
    return doc


def interleave_rows(w, n_heads, head_dim):
    """HF rotate-half rows -> Mistral interleaved-pair rows (the inverse of transformers'
    permute_for_rope): view rows as [heads, 2, head_dim/2, ...], swap the two middle axes."""
    rest = w.shape[1:]
    return (w.reshape(n_heads, 2, head_dim // 2, *rest).transpose(1, 2)
            .reshape(n_heads * head_dim, *rest).contiguous())


def rotate_half_rows(w, n_heads, head_dim):
    """Mistral interleaved rows -> HF rotate-half rows (what the convert_*_to_hf.py scripts do)."""
    rest = w.shape[1:]
    return (w.reshape(n_heads, head_dim // 2, 2, *rest).transpose(1, 2)
            .reshape(n_heads * head_dim, *rest).contiguous())


def rope_interleaved(x, pos, theta):
    """x [T, H, d]; pairs (x[2i], x[2i+1]) rotated by pos * theta^(-2i/d) (Mistral layout)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]
    c, s = ang.cos()[:, None, :], ang.sin()[:, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    return torch.stack([xr * c - xi * s, xr * s + xi * c], dim=-1).reshape(x.shape)


def rope_rotate_half(x, pos, theta):
    """x [T, H, d]; pairs (x[i], x[i + d/2]) (HF layout)."""
    d = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv[None, :]
    c = torch.cat([ang.cos(), ang.cos()], -1)[:, None, :]
    s = torch.cat([ang.sin(), ang.sin()], -1)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * c + torch.cat([-x2, x1], -1) * s


def top2_gaps(logits):
    """logits [..., vocab] -> smallest top-1 minus top-2 gap, its (flattened) step, the count
    below 1e-3 and every gap."""
    top = torch.topk(logits.float(), 2, dim=-1).values
    g = (top[..., 0] - top[..., 1]).reshape(-1)
    i = int(torch.argmin(g))
    return dict(min_top2_logit_gap=float(g[i]), min_top2_logit_gap_step=i,
                n_gaps_below_1e_3=int((g < 1e-3).sum()), top2_logit_gaps=[round(float(v), 6) for v in g])
