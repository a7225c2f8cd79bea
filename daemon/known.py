"""The names a person types — channels, labels, stages — as the config and the store know
them: a typo is refused with the names it could have meant, and completion offers them.

Functions of a store (`Storage.item_channels`, `item_labels`), not of how it keeps them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipewarden.errors import UsageError
from pipewarden.inputs import shown

if TYPE_CHECKING:
    from pipewarden.config import Config
    from pipewarden.store import Storage

SHOWN_MAX = 20  # names listed in an error; more are counted


def config_channels(config: Config) -> set[str]:
    """Channels the config names: those with hours, and every stage's that is not a template."""
    named = set(config.channels)
    for pipeline in config.pipelines.values():
        named |= {stage.channel for stage in pipeline.stages if "{" not in stage.channel}
    return named


def known_channels(config: Config, store: Storage | None) -> list[str]:
    """The config's channels, and every channel an item has had or a hold has named."""
    names = config_channels(config)
    if store is not None:
        names |= set(store.item_channels())
        names |= {hold.target for hold in store.active_holds() if hold.scope == "channel"}
    return sorted(names)


def known_labels(store: Storage | None) -> list[str]:
    """Labels of the items retrying, failed or ignored (what `retry --label` can find)."""
    return sorted(store.item_labels()) if store is not None else []


def check_channel(config: Config, store: Storage | None, channel: str) -> str:
    """`channel`, if the config or the store knows it; else UsageError naming the known ones."""
    known = known_channels(config, store)
    if channel in known:
        return channel
    raise UsageError(
        f"no channel '{shown(channel)}' is known — {listed('known channels', known)};"
        " to name one no item has had yet, add --force"
    )


def listed(what: str, names: list[str]) -> str:
    """'known channels: a, b, c' (the first SHOWN_MAX, then how many more), or 'none'."""
    if not names:
        return f"{what}: none yet"
    more = f" and {len(names) - SHOWN_MAX} more" if len(names) > SHOWN_MAX else ""
    return f"{what}: {', '.join(shown(n) for n in names[:SHOWN_MAX])}{more}"
