"""The optional fast paths: Triton kernels for CUDA GPUs, and oneDNN-packed linears for CPUs.

Why not `altclip_kernels/`: Hugging Face publishes a package named `kernels`, and transformers ≥ 5.25 imports it when its
models load. A top-level `altclip_kernels/` here would be found first and break transformers in the same process, so the
folder carries the project's name.

    import altclip_kernels
    ok, why = altclip_kernels.available()   # (True, "CUDA device ...") or (False, "triton is not installed")
    if ok:
        out = altclip_kernels.attention(q, k, v, attention_mask)   # (B, H, N, D)
        y, h = altclip_kernels.layer_norm(x, w, b, residual=r)      # y = LN(x + r), h = x + r

Files:
- attention.py, layernorm.py: the Triton kernels (attention, attention_reference; layer_norm, layer_norm_reference);
- cpu.py: what this CPU can do (its class, native bfloat16/float16), and the choices measured on each class;
- onednn.py: the blocks' linears packed for oneDNN, activations fused (CPU only).

Importing this package imports no Triton: the CPU paths never need it, and importing it costs start-up time. The
Triton names (`attention`, `layer_norm`, their references) are loaded on first use; without Triton they are stand-ins
that raise with the reason, and `available()` says why. Triton decides when a kernel is decorated whether it is
compiled for the GPU or run by its CPU interpreter, so TRITON_INTERPRET=1 must be set before the first use of a
Triton name or of `available()` (tests/conftest.py and bench/gpu_kernels.py set it when there is no CUDA device).
"""
import importlib
import os

HEAD_SIZES = (16, 32, 64, 128)  # the head sizes D the attention kernel is compiled for (attention.py)
TRITON_NAMES = ("attention", "attention_reference", "layer_norm", "layer_norm_reference")

_triton_error = None  # why Triton cannot be imported, once tried; None when it imported
_interpret_at_load = None  # TRITON_INTERPRET as it was when the kernels were defined; None before


def _interpret_env() -> bool:
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in ("1", "true", "on", "yes")


def _load_triton() -> str | None:
    """Import Triton and define the kernels, once; bind the Triton names here. Returns why that failed, or None."""
    global _triton_error, _interpret_at_load
    if _interpret_at_load is not None:
        return _triton_error
    _interpret_at_load = _interpret_env()
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken installation
        _triton_error = f"triton is not installed ({type(exc).__name__}: {exc})"

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"the Triton kernels cannot run here: {_triton_error}")

        names = dict.fromkeys(TRITON_NAMES, unavailable)
    else:
        # import_module, not `from . import attention`: that would ask this module's __getattr__ for the name first
        modules = [importlib.import_module(f"{__name__}.{file}") for file in ("attention", "layernorm")]
        names = {name: getattr(module, name) for module in modules for name in TRITON_NAMES if hasattr(module, name)}
    globals().update(names)  # after the submodule imports, which bind the module objects to the same names
    return _triton_error


def __getattr__(name):  # PEP 562: the Triton names, imported on first use
    if name in TRITON_NAMES:
        _load_triton()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def refusal(config=None) -> str | None:
    """Why the Triton kernels cannot run here, or cannot run a model of this AltCLIPConfig, in one line; None when
    they can. The one check behind AltCLIP.use_kernels and load_pretrained(kernels=...)."""
    ok, why = available()
    if not ok:
        return f"the Triton kernels cannot run here: {why}"
    if config is not None and (why := unsupported_shapes(config)) is not None:
        return f"the Triton kernels cannot run this model: {why}"
    return None


def interpreted() -> bool:
    """Whether the kernels were defined for Triton's CPU interpreter (TRITON_INTERPRET=1 when first loaded)."""
    return _load_triton() is None and _interpret_at_load


def available() -> tuple[bool, str]:
    """Whether the Triton kernels can run here, and a one-line reason either way.

    (True, reason) when Triton imports and either a CUDA device is present (kernels compiled for it) or the
    kernels were defined under TRITON_INTERPRET=1 (they run on CPU tensors in Triton's interpreter, slowly).
    (False, reason) otherwise. The first call imports Triton; after that it only asks torch whether CUDA is there.
    """
    if (error := _load_triton()) is not None:
        return False, error
    if _interpret_at_load:
        return True, "Triton interpreter (TRITON_INTERPRET=1): kernels run on CPU, slowly"
    import torch

    if torch.cuda.is_available():
        return True, "Triton kernels compiled for the CUDA device"
    if _interpret_env():
        return False, ("TRITON_INTERPRET=1 was set after the kernels were loaded; set it before their first use "
                       "(the @triton.jit decorators read it)")
    return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels in Triton's CPU interpreter)"


__all__ = ["HEAD_SIZES", "available", "interpreted", "refusal", "unsupported_shapes", *TRITON_NAMES]
