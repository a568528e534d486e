"""The notebooks in notebooks/ run top to bottom without an error, offline, and the committed copies are clean.

Each notebook is executed by `execute` from notebooks/run.py, the script that also saves them: a fresh IPython
kernel started from *this* interpreter (sys.executable, through a kernelspec written to a temporary folder, so a
`python3` kernel of another Python cannot be picked up), working directory notebooks/, HF_HUB_OFFLINE=1, and
TRITON_INTERPRET=1 when there is no GPU. The notebook is read from disk and executed in memory; the executed copy is
written to pytest's temporary folder, never over the committed file. Every notebook asserts (assert_close) that
its step-by-step computation equals the model's own forward, so a notebook that runs is a notebook that checks.

Weights: the tiny random model (ALTCLIP_WEIGHTS=random), unless ALTCLIP_WEIGHTS is already set to a folder with the
real ones. Re-execute and save the notebooks with `python notebooks/run.py`.
"""
import copy
import importlib.util
import os
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("notebook_runner", ROOT / "notebooks" / "run.py")
runner = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(runner)

NOTEBOOKS = runner.notebooks()
CELL_TIMEOUT = 300  # seconds per cell; the slowest cell takes a few seconds on a 2-core CPU



def test_the_four_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_image_tower.ipynb", "02_text_tower.ipynb",
                                           "03_zero_shot_multilingual.ipynb", "04_kernels.ipynb"]


@pytest.mark.slow  # 12-17 s per notebook on a 2-core CPU, a third of it starting the kernel and importing torch
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, tmp_path, monkeypatch):
    if path.name == "04_kernels.ipynb" and importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed (it is only required on Linux x86_64)")
    monkeypatch.setenv("ALTCLIP_WEIGHTS", os.environ.get("ALTCLIP_WEIGHTS", "random"))
    committed = path.read_bytes()
    nb, seconds = runner.execute(path, timeout=CELL_TIMEOUT)  # raises CellExecutionError, naming the cell
    nbformat.write(runner.clean(nb), tmp_path / path.name)  # for inspection after a failure
    print(f"{path.name}: {seconds:.1f} s")

    assert path.read_bytes() == committed, "executing a notebook must not modify the committed file"
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name} drew no picture"
    text = "".join(out.get("text", "") for out in outputs)
    assert "✓" in text, f"{path.name} printed none of its checks"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_executed_and_clean(path):
    """The committed file carries its outputs (pictures included) and no volatile metadata: what
    `python notebooks/run.py` saves. Fast: no kernel is started."""
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), \
        f"{path.name} was not executed top to bottom; run `python notebooks/run.py {path.relative_to(ROOT)}`"
    assert any("image/png" in out.get("data", {}) for cell in code for out in cell.outputs)
    assert not [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert runner.clean(copy.deepcopy(nb)) == nb, f"{path.name} has volatile metadata; save it with notebooks/run.py"
    assert len({cell.id for cell in nb.cells}) == len(nb.cells)
