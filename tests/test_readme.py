"""The README's Python examples run as written (examples that cannot rot)."""
import pathlib
import re

import torch

import ssvi

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert python_blocks(), "README.md lost its Python example"


def test_readme_python_examples_run():
    torch.manual_seed(0)
    for block in python_blocks():
        ns: dict = {}
        exec(compile(block, str(README), "exec"), ns)
        if "ctrl" in ns:  # the own-model example: the subspace stayed exactly at its density
            ctrl, model = ns["ctrl"], ns["model"]
            assert ctrl.active_counts() == ctrl.targets
            assert ctrl.n_updates == 2  # steps 100 and 200 of 200
            probs = ns["probs"]
            assert probs.shape == (128, 10)
            assert torch.allclose(probs.sum(-1), torch.ones(128), atol=1e-5)
            for _, layer in ssvi.bayes_layers(model):
                assert not layer.mu[~layer.mask].any()


def test_layout_table_names_files_that_exist():
    """Every path in the README's layout table (| `path` | job |) exists in the repository."""
    rows = re.findall(r"^\| (.+?) \|", README.read_text(), flags=re.M)
    paths = [p for row in rows for p in re.findall(r"`([^`]+)`", row)]
    assert any(p.startswith("ssvi/") for p in paths), "README.md lost its layout table"
    missing = [p for p in paths if not (README.parent / p).exists()]
    assert not missing, f"README's layout table names missing paths: {missing}"
