"""Our modules live beside whatever the user has installed: no top-level name of ours may shadow a package, our
modules and transformers' AltCLIP import together in either order, and the CPU command line never loads Triton.

(transformers 5.25 imports Hugging Face's `kernels` package with its models; a top-level `kernels/` of ours, as this
repository once had, was found first and broke every process that imported both.)
"""
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Every module a user may import from the repository root, and the submodules of our package.
OURS = sorted([p.stem for p in ROOT.glob("*.py")] + ["altclip_kernels", "altclip_kernels.cpu", "altclip_kernels.onednn"])


def top_level_names():
    """Our import names: the repository root's modules and packages, and bench/'s scripts (bench/ is first on
    sys.path when one of them runs, so a bench/kernels.py shadowed Hugging Face's package there)."""
    return sorted({p.stem for p in ROOT.glob("*.py")} | {p.parent.name for p in ROOT.glob("*/__init__.py")}
                  | {p.stem for p in ROOT.glob("bench/*.py")})


def test_no_top_level_name_is_an_installed_package():
    """No top-level module or package of ours has the import name of an installed distribution (transformers'
    dependencies include Hugging Face's `kernels`)."""
    installed = importlib.metadata.packages_distributions()
    assert "kernels" in installed or importlib.metadata.version("transformers") < "5.25", \
        "transformers >= 5.25 installs Hugging Face's kernels package; this test would not see a clash"
    clashes = {name: installed[name] for name in top_level_names() if name in installed}
    assert not clashes, f"top-level names of ours that installed packages own: {clashes}"


def _run(code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


THEIRS = ("import transformers\n"
          "from transformers import AltCLIPModel, AltCLIPConfig\n"
          "AltCLIPModel(AltCLIPConfig(text_config=dict(vocab_size=10, hidden_size=8, intermediate_size=8,"
          " num_hidden_layers=1, num_attention_heads=2), vision_config=dict(hidden_size=8, intermediate_size=8,"
          " num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14), projection_dim=8))\n")
MINE = ("import importlib\n"
        f"for name in {OURS!r}:\n"
        "    importlib.import_module(name)\n"
        "import altclip_kernels\n"
        "altclip_kernels.available()\n")  # loads the Triton kernels, where Triton is installed


@pytest.mark.parametrize("order", ["theirs first", "ours first"])
def test_ours_and_transformers_altclip_in_one_process(order):
    _run(THEIRS + MINE if order == "theirs first" else MINE + THEIRS)


def test_cpu_command_line_imports_no_triton(tmp_path):
    """`python altclip.py IMAGE LABELS` on a CPU: Triton is never imported (its import alone costs start-up time)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "altclip.py", "examples/cat.jpg", "a cat", "a dog",
                           "--model", "examples/mini-altclip", "-v"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin",
                                                                                      "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time")]
    assert "altclip" in modules or "cli" in modules, "importtime output not understood"
    assert not [m for m in modules if m == "triton" or m.startswith("triton.")]


def test_python_altclip_py_hands_over_to_cli_before_defining_anything():
    """`python altclip.py` runs cli.main, which imports altclip.py as a module: the script itself must hand over
    before it defines the model, or every definition in the file runs twice."""
    code = ("import runpy, sys, cli\n"
            "cli.main = lambda: 'AltCLIP' in sys._getframe(1).f_globals  # exit 1 if __main__ defined the model\n"
            "runpy.run_path('altclip.py', run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:] or "altclip.py defined the model before handing over to cli.main"
