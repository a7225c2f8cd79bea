"""The tray's state and icon as plain functions of a status snapshot."""

from __future__ import annotations

import time

import pytest
from pipewarden.tray.icon import COLOURS, SIZE, draw_icon
from pipewarden.tray.model import FAILURES_RED_PER_HOUR, SEPARATOR, tray_state


def snapshot(states=None, holds=(), rules_ok=True) -> dict:
    states = states or {"done": (10, 0)}
    return {
        "rules": {"ok": rules_ok, "version": "abc", "error": None if rules_ok else "x.yaml:1:1"},
        "holds": list(holds),
        "stuck": [],
        "pipelines": [{
            "name": "outreach",
            "stages": [{"name": "send", "states": [
                {"state": state, "total": total, "d24": d1, "d1": d1}
                for state, (total, d1) in states.items()
            ]}],
        }],
    }  # fmt: skip


def halt(target: str, count: int = 25, label: str = "Rate limited") -> dict:
    return {"kind": "halt", "scope": "channel", "target": target, "reason": f"{count}× {label}",
            "label": label, "count": count, "created_at": time.time()}  # fmt: skip


@pytest.mark.parametrize(
    ("snap", "colour", "badge"),
    [
        (None, "grey", None),
        (snapshot(), "green", None),
        (snapshot({"done": (10, 2), "retrying": (3, 2)}), "amber", None),
        (snapshot(rules_ok=False), "amber", None),
        (snapshot(holds=[{**halt("x"), "kind": "pause"}]), "amber", None),
        (snapshot(holds=[halt("sms"), halt("form", 3, "Cloudflare blocked")]), "red", 2),
        (snapshot({"failed": (40, FAILURES_RED_PER_HOUR)}), "red", FAILURES_RED_PER_HOUR),
    ],
)  # fmt: skip
def test_the_colour_and_badge_follow_the_daemons_health(snap, colour, badge):
    state = tray_state(snap)
    assert (state.colour, state.badge) == (colour, badge)
    image = draw_icon(state.colour, state.badge)
    assert image.size == (SIZE, SIZE)
    assert image.getpixel((SIZE // 2, 12)) == COLOURS[colour]  # the disc, above the badge
    assert image.getpixel((0, 0))[3] == 0  # transparent corners
    badge_pixel = image.getpixel((55, 40))
    assert (badge_pixel == (255, 255, 255, 255)) == bool(badge)  # the badge is drawn or not


def test_the_halts_submenu_lists_exactly_the_halted_channels_and_clears_them():
    paused = {**halt("capture"), "kind": "pause"}
    state = tray_state(snapshot(holds=[halt("sms"), halt("form", 3, "Cloudflare blocked"), paused]))
    (halts,) = [entry for entry in state.menu if entry.text == "Halts"]
    since = time.strftime("%H:%M")
    assert [(e.text, e.action) for e in halts.children] == [
        (f"sms — 25× Rate limited since {since}", "clear:sms"),
        (f"form — 3× Cloudflare blocked since {since}", "clear:form"),
    ]
    assert state.halts == ("sms", "form")
    texts = [entry.text for entry in state.menu if entry is not SEPARATOR]
    assert texts[0] == "outreach: 10 done"
    assert texts[-5:] == ["Pause all", "Resume all", "Reload rules", "Open dashboard", "Quit"]
    assert state.tooltip.startswith("pipewarden: 2 halted (sms, form) · 1 paused")


def test_no_halts_says_so_and_an_unreachable_daemon_is_grey():
    (halts,) = [entry for entry in tray_state(snapshot()).menu if entry.text == "Halts"]
    assert [(e.text, e.enabled) for e in halts.children] == [("none: everything flows", False)]
    grey = tray_state(None)
    assert grey.tooltip == "pipewarden: the daemon cannot be reached"
    assert grey.menu[0].text == "daemon not reachable"
