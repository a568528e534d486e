"""Optional Triton fast path: fused attention and LayerNorm, each proven against a plain-torch reference.

    import kernels
    ok, why = kernels.available()   # (True, "CUDA device ...") or (False, "triton is not installed")
    if ok:
        out = kernels.attention(q, k, v, attention_mask)       # (B, H, N, D)
        y, h = kernels.layer_norm(x, w, b, residual=r)          # y = LN(x + r), h = x + r

Importing this package never fails and never touches the GPU: without Triton, `attention` and `layer_norm` are
stand-ins that raise with the reason, and `available()` says why. Triton decides at decoration time whether a
kernel is compiled for the GPU or run by its CPU interpreter, so TRITON_INTERPRET=1 must be set *before* this
package is first imported (tests/conftest.py and bench/kernels.py do so when there is no CUDA device).

Files: attention.py (attention, attention_reference), layernorm.py (layer_norm, layer_norm_reference).
"""
import os

HEAD_SIZES = (16, 32, 64, 128)  # the head sizes D the attention kernel is compiled for (attention.py)


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


_INTERPRET_AT_IMPORT = _interpret_env()

try:
    import triton  # noqa: F401
except Exception as exc:  # ImportError, or a broken installation
    _TRITON_ERROR = f"triton is not installed ({type(exc).__name__}: {exc})"
else:
    _TRITON_ERROR = None

if _TRITON_ERROR is None:
    from .attention import attention, attention_reference
    from .layernorm import layer_norm, layer_norm_reference
else:
    def _unavailable(*args, **kwargs):
        raise RuntimeError(f"the Triton kernels cannot run here: {_TRITON_ERROR}")

    attention = attention_reference = layer_norm = layer_norm_reference = _unavailable


def unsupported_shapes(config) -> str | None:
    """Why the kernels cannot run a model of this AltCLIPConfig (a tower whose head size is not in HEAD_SIZES: the
    mini AltCLIP's text tower has 96 / 4 = 24), or None when they can."""
    for name, tower in (("image", config.vision), ("text", config.text)):
        head = tower.hidden_size // tower.num_attention_heads
        if head not in HEAD_SIZES:
            return (f"the {name} tower's attention heads have size {head} ({tower.hidden_size} / "
                    f"{tower.num_attention_heads} heads), and the Triton attention kernel takes "
                    f"{', '.join(map(str, HEAD_SIZES))}")
    return None


def interpreted() -> bool:
    """Whether the kernels were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 at first import)."""
    return _TRITON_ERROR is None and _INTERPRET_AT_IMPORT


def available() -> tuple[bool, str]:
    """Whether the Triton kernels can run here, and a one-line reason either way.

    (True, reason) when Triton imports and either a CUDA device is present (kernels compiled for it) or the
    kernels were defined under TRITON_INTERPRET=1 (they run on CPU tensors in Triton's interpreter, slowly).
    (False, reason) otherwise. Cheap: it asks torch whether a CUDA device exists, nothing more.
    """
    if _TRITON_ERROR is not None:
        return False, _TRITON_ERROR
    if _INTERPRET_AT_IMPORT:
        return True, "Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU, slowly"
    import torch

    if torch.cuda.is_available():
        return True, "Triton kernels compiled for the CUDA device"
    if _interpret_env():
        return False, ("TRITON_INTERPRET=1 was set after `kernels` was imported; set it before the first import "
                       "(the @triton.jit decorators read it)")
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)"


__all__ = ["available", "interpreted", "attention", "attention_reference", "layer_norm", "layer_norm_reference"]
