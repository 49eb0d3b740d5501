import importlib.util
import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def load_script(name: str):
    """scripts/NAME.py imported as a module (scripts are not part of the package)."""
    path = Path(__file__).resolve().parent.parent / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than ~10 s")


def save_tiny_model(path, std: float = 0.05):
    """Write a kinema folder with the 'tiny' preset, its DiT weights drawn from N(0, std) (seed 0)."""
    from kinema.config import preset
    from kinema.dit import DiT
    from kinema.vae import VAE
    from kinema.weights import save_model

    torch.manual_seed(0)
    cfg = preset("tiny")
    dit, vae = DiT(cfg.dit), VAE(cfg.vae)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, std)
    save_model(path, cfg, dit, vae)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A kinema folder with the 'tiny' preset and random (non-zero-init) weights."""
    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and two threads on a busy 2-core machine spin far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def pipe(tiny_model_dir):
    """A Pipeline on the tiny random model (module tests may override this fixture)."""
    from kinema.infer import Pipeline
    return Pipeline.from_pretrained(tiny_model_dir)
