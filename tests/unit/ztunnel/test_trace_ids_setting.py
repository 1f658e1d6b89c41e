"""AMBIENT_TRACE_IDS switches the node proxy's correlation-id fields (on by default)."""

from ambient.ztunnel.settings import Settings


def test_trace_ids_default_on_and_switch_off() -> None:
    assert Settings.from_env({}).trace_ids is True
    assert Settings.from_env({"AMBIENT_TRACE_IDS": "0"}).trace_ids is False
    assert Settings.from_env({"AMBIENT_TRACE_IDS": "1"}).trace_ids is True
