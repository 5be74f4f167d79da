import pytest

from tests.comm.harness import world


@pytest.fixture(scope="session")
def esp_world():
    return world()
