"""The shared Registry: built from instances, refuses duplicate names, suggests for unknown ones."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from skillstore.errors import ConfigError
from skillstore.registry import Registry


@dataclass(frozen=True)
class Entry:
    name: str
    size: int = 0


def test_registry_maps_names_to_the_instances_in_order():
    a, b = Entry("alpha", 1), Entry("beta", 2)
    reg = Registry("widget", [a, b])
    assert list(reg) == ["alpha", "beta"] and len(reg) == 2
    assert reg["beta"] is b and reg.get_or_raise("alpha") is a
    assert "alpha" in reg and "gamma" not in reg and 3 not in reg
    assert reg.get("gamma") is None and reg.get("gamma", a) is a
    assert dict(reg) == {"alpha": a, "beta": b} and list(reg.values()) == [a, b]


def test_registry_refuses_two_entries_with_one_name():
    with pytest.raises(ConfigError, match="Two widget entries are named 'alpha'"):
        Registry("widget", [Entry("alpha", 1), Entry("beta"), Entry("alpha", 2)])


def test_registry_refuses_an_entry_without_a_name():
    with pytest.raises(ConfigError, match="has no name"):
        Registry("widget", [Entry("")])


def test_registry_is_read_only():
    reg = Registry("widget", [Entry("alpha")])
    with pytest.raises(TypeError):
        reg["beta"] = Entry("beta")  # type: ignore[index]


def _registries():
    from skillstore.packs.codecs import CODECS, get_codec
    from skillstore.reports.render import REPORT_FORMATS
    from skillstore.routing.routers import ROUTERS, get_router
    from skillstore.states.fusion import FUSION_METHODS, get_fusion
    from skillstore.training.run import TRAINERS, get_trainer

    # (registry, its module-level lookup, a typo of a real name, the name it should suggest)
    return {"codec": (CODECS, get_codec, "mplrr", "mplr"),
            "router": (ROUTERS, get_router, "learnd", "learned"),
            "fusion method": (FUSION_METHODS, get_fusion, "tie", "ties"),
            "report format": (REPORT_FORMATS, None, "htm", "html"),
            "trainer": (TRAINERS, get_trainer, "sfft", "sft")}


@pytest.mark.parametrize("kind", ["codec", "router", "fusion method", "report format", "trainer"])
def test_unknown_name_says_did_you_mean_and_lists_the_valid_names(kind):
    registry, lookup, typo, suggestion = _registries()[kind]
    assert isinstance(registry, Registry) and registry.kind == kind
    for get in (registry.__getitem__, registry.get_or_raise, lookup):
        if get is None:
            continue
        with pytest.raises(ConfigError) as exc:
            get(typo)
        msg = str(exc.value)
        assert msg.startswith(f"Unknown {kind} {typo!r}.")
        assert f"Did you mean {suggestion!r}?" in msg
        assert f"Valid names: {', '.join(sorted(registry))}." in msg
    assert registry.get(typo) is None and typo not in registry


def test_report_rendering_refuses_an_unknown_format_by_name():
    from skillstore.reports.render import render_report

    with pytest.raises(ConfigError, match="Unknown report format 'htm'. Did you mean 'html'"):
        render_report(None, "htm")  # type: ignore[arg-type]
