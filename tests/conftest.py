import os
import warnings

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")  # must be set before triton is imported
warnings.filterwarnings("ignore")

# A small, fast setting: 2 epochs on Split-Digits with the packaged tiny ViT.
FAST = [
    "trainer.max_epochs=2",
    "trainer.batch_size=64",
    "trainer.progress_bar=false",
    "print_report=false",
]


@pytest.fixture
def fast_cfg():
    from moecl.run import compose_config

    def make(*overrides: str):
        return compose_config([*FAST, *overrides])

    return make
