"""Every dotted path vLLM resolves to a vllm-esp class (``vllm_esp.qualnames``) resolves."""

import pytest
from vllm.utils.import_utils import resolve_obj_by_qualname

from vllm_esp import qualnames


@pytest.mark.parametrize("name,path", sorted(qualnames.ALL.items()))
def test_qualname_resolves_to_a_class(name, path):
    assert isinstance(resolve_obj_by_qualname(path), type), name
