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
