"""Python workers for the demo `sites` pipeline (find and score stages).

Plain functions: they take the item's data (and optionally a context) and return
what to merge into it, or raise. They never import pipewarden.
"""

import time

SOCIAL_HOSTS = ("facebook.com", "instagram.com", "x.com")


def find(data: dict) -> dict:
    """Checks a found site is worth capturing; social media pages are expected filters."""
    host = data["url"].split("/")[2]
    if host.removeprefix("www.") in SOCIAL_HOSTS:
        raise ValueError(f"Social media platform: {host}")
    return {"host": host}


def score(data: dict, ctx) -> dict:
    """Scores a captured site, reporting progress as it goes."""
    for step in range(1, 4):
        ctx.progress(step / 3, f"scoring {step}/3")
        time.sleep(0.05)
    if data.get("behaviour") == "not_local":
        raise ValueError("Not a local business (national chain)")
    return {"score": len(data["host"]) % 10}
