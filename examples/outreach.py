"""Python worker for the demo `outreach` pipeline: sends by sms, email or form."""


def send(data: dict, ctx) -> dict | None:
    method = data["contact_method"]
    if data.get("opted_out"):
        raise RuntimeError(f"{method}: recipient opted out")
    if data.get("after_hours"):
        raise RuntimeError("SMS blocked: outside business hours")
    if data.get("cloudflare"):
        raise RuntimeError("Cloudflare challenge blocked the form submit")
    if data.get("flaky") and ctx.attempt == 1:
        raise ConnectionError("connection reset by peer")
    return {"sent_via": method, "run": ctx.run}
