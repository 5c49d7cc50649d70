import pytest


@pytest.fixture(scope="session")
def toy_rn():
    from precompute.registry import load_embedded

    return load_embedded("toy-rn")


@pytest.fixture(scope="session")
def toy_vit():
    from precompute.registry import load_embedded

    return load_embedded("toy-vit")
