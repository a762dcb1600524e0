"""The public API is what `__all__` lists, and every name in it exists."""

import model_store


def test_all_names_exist() -> None:
    assert sorted(model_store.__all__) == model_store.__all__
    for name in model_store.__all__:
        assert hasattr(model_store, name), name
    assert {"ModelStore", "CheckpointManager", "StoreError"} <= set(model_store.__all__)
