"""Execute the notebooks top to bottom and save them with their outputs, cleaned so that re-running gives no noise.

    python notebooks/run.py                              # every notebook (see `notebooks()`), executed and saved
    python notebooks/run.py notebooks/02_text_tower.ipynb
    python notebooks/run.py --check                      # execute in memory only, save nothing; exit 1 on an error

Run it after editing a notebook, and commit what it writes. tests/test_notebooks.py uses the same `execute`.

The kernel. Each notebook runs in a fresh IPython kernel started from *this* interpreter (sys.executable): a
kernelspec pointing at it is written into a temporary folder and only that folder is searched, so neither a
`python3` kernel installed elsewhere (~/.local/share/jupyter, another virtual environment) nor the PATH can pick a
different Python. The kernel's working directory is notebooks/, as when Jupyter opens the notebook.

The environment. HF_HUB_OFFLINE=1 (never wait on the network), OMP_WAIT_POLICY=PASSIVE (unless set: idle OpenMP
threads sleep rather than spin, which on a busy CPU makes each small op wait for a descheduled thread), and
TRITON_INTERPRET=1 when there is no CUDA device (the kernels notebook then runs Triton in its CPU interpreter).
Which weights the notebooks use is decided by notebooks/weights.py (ALTCLIP_WEIGHTS=/folder, the hub cache, the
committed mini model in examples/mini-altclip, or a tiny random model); the saved outputs are those of whichever it
finds. Notebook 05 is about the mini model's training and reads its folder, so it runs only when
examples/mini-altclip is there; without it, it is left out of the default list and refused when named.

Cleaning, so that a re-run changes only what the code changed: cells keep their ids; cell metadata and timing are
dropped; execution counts run 1, 2, 3, … (they do for a top-to-bottom run); consecutive pieces of printed text are
joined (the kernel cuts them into messages by timing); notebook metadata keeps only the kernel's name and the
language's name (no versions).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
MINI = HERE.parent / "examples" / "mini-altclip"  # the committed mini AltCLIP (see weights.py)
NEEDS_MINI = {"05_training.ipynb"}  # notebooks that read the mini model's folder, whatever weights.load() finds
KERNEL = "altclip-python"  # the name of the temporary kernelspec
METADATA = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"}}


def notebooks() -> list[Path]:
    """The notebooks that can run here, in order: all of notebooks/, less those needing a missing mini model."""
    return [p for p in sorted(HERE.glob("[0-9][0-9]_*.ipynb")) if runnable(p)]


def runnable(path: Path) -> bool:
    return path.name not in NEEDS_MINI or (MINI / "config.json").exists()


def environment() -> dict[str, str]:
    """The kernel's environment: ours, offline, and with Triton's interpreter when there is no GPU."""
    import torch

    env = dict(os.environ, HF_HUB_OFFLINE="1")
    # OpenMP threads that wait for work sleep instead of spinning. On a CPU shared with other processes, spinning
    # threads made every small op of the mini model wait ~15 ms for a descheduled partner (80x slower notebooks).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not torch.cuda.is_available():
        env.setdefault("TRITON_INTERPRET", "1")
    return env


def execute(path: Path, timeout: int = 600, env: dict | None = None):
    """Run a notebook top to bottom in a fresh kernel of this interpreter. Returns (executed notebook, seconds).

    Raises nbclient.exceptions.CellExecutionError, naming the cell and the error, if any cell fails."""
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as specs:
        write_kernel_spec(Path(specs) / KERNEL)  # kernel.json: [sys.executable, "-m", "ipykernel_launcher", ...]
        km = AsyncKernelManager(kernel_name=KERNEL,
                                kernel_spec_manager=KernelSpecManager(kernel_dirs=[specs], ensure_native_kernel=False))
        client = NotebookClient(nb, km=km, timeout=timeout, startup_timeout=120, record_timing=False,
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute(cleanup_kc=True, env=env if env is not None else environment())  # shut the kernel down after
        return nb, time.perf_counter() - start


def clean(nb):
    """Strip what changes from run to run without the code changing (see the module docstring)."""
    nb.metadata = nbformat.from_dict(METADATA)
    count = 0
    for cell in nb.cells:
        cell.metadata = nbformat.NotebookNode()
        if cell.cell_type == "code":
            count += 1
            cell.execution_count = count
            outputs = []
            for out in cell.outputs:
                if out.output_type == "execute_result":
                    out.execution_count = count
                if (out.output_type == "stream" and outputs and outputs[-1].output_type == "stream"
                        and outputs[-1].name == out.name):
                    outputs[-1].text += out.text  # how printed text is cut into messages depends on timing
                else:
                    outputs.append(out)
            cell.outputs = outputs
    return nb


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="*", type=Path, help="notebooks to run (default: all of notebooks/)")
    p.add_argument("--check", action="store_true", help="execute only; do not save")
    args = p.parse_args(argv)
    failed = 0
    for path in args.paths or notebooks():
        if not runnable(path):
            where = MINI.relative_to(HERE.parent) if MINI.is_relative_to(HERE.parent) else MINI
            print(f"{path.name}: needs the mini model in {where}, which is missing (train.py writes it)",
                  file=sys.stderr)
            failed += 1
            continue
        try:
            nb, seconds = execute(path.resolve())
        except Exception as e:  # CellExecutionError carries the cell source and the traceback
            print(f"{path.name}: FAILED\n{e}", file=sys.stderr)
            failed += 1
            continue
        if not args.check:
            nbformat.write(clean(nb), path)
        print(f"{path.name}: {seconds:.1f} s{'' if args.check else ', saved'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
