"""Helpers shared by the reference-fixture generators in tools/reference/.

* perturb_constants: the constant-tensor perturbation rule of reference-parity.md section 2;
* save_reference: writes a `<name>.reference.safetensors` (F32 / I64, metadata {seed, generator});
* maxdiff, sha256, dir_size: small utilities.

Imported by whisper_fixtures.py and voxtral_realtime_fixtures.py (run them as scripts from
anywhere: they put this directory on sys.path).
"""

import hashlib
import os

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
