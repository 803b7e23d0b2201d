import streams


def test_all_lists_exactly_the_public_names() -> None:
    public = {name for name in vars(streams) if not name.startswith("_")} - {"annotations", "errors"}
    assert set(streams.__all__) == public
    assert streams.__all__ == sorted(streams.__all__)


def test_import_has_no_side_effects_on_logging() -> None:
    import logging

    assert not logging.getLogger("streams").handlers
