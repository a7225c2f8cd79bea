"""Every shipped rule classifies a realistic message; exception types map; the rest is unknown."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipewarden.classifier import Classifier
from pipewarden.rules import load_rules
from pipewarden.types import Group

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def classifier() -> Classifier:
    ruleset = load_rules(sorted((REPO / "rules").glob("*.yaml")), REPO)
    assert ruleset.warnings == ()
    return Classifier(ruleset)


SITES = [
    ("Social media platform: facebook.com", "ignore", "Social media"),
    ("Skipped: Business directory (yelp.com)", "ignore", "Business directory"),
    ("Not a local business (national chain)", "ignore", "Not a local business"),
    ("Home service franchise detected: Mr. Rooter", "ignore", "Franchise"),
    ("Government site (.gov.uk)", "ignore", "Government domain"),
    ("Education domain: ox.ac.uk", "ignore", "Education domain"),
    ("Non-commercial organisation", "ignore", "Non-commercial"),
    ("Cross-border duplicate of acme.de", "ignore", "Cross-border duplicate"),
    ("Duplicate domain acme.com already scored", "ignore", "Duplicate domain"),
    ("Country mismatch: site is in FR, campaign is UK", "ignore", "Country mismatch"),
    ("No email template for locale pt-BR", "terminal", "No template"),
    ("HTTP 404 Not Found — Cannot capture page", "terminal", "Permanent HTTP error"),
    ("HTTP 403 Forbidden. Cannot capture", "terminal", "Permanent HTTP error"),
    ("Max recapture attempts (3) reached", "terminal", "Max recapture retries"),
    (
        "browserType.launchPersistentContext: Failed to create userDataDir",
        "retriable",
        "Browser launch conflict",
    ),
    ("Request failed with status code 400", "retriable", "API bad request"),
    ("Request failed with status code 401", "retriable", "API auth error"),
    ("Request failed with status code 429", "retriable", "Rate limited"),
    ("Incomplete LLM response: finish_reason=length", "retriable", "Incomplete LLM"),
    ("page.goto: Timeout 30000ms exceeded", "retriable", "Timeout"),
    ("Navigation timed out after 30s", "retriable", "Timeout"),
    ("read ECONNRESET", "retriable", "Network error"),
    ("getaddrinfo ENOTFOUND example.invalid", "retriable", "Network error"),
    (
        "Execution context was destroyed, most likely because of navigating and changing page",
        "retriable",
        "Page navigating",
    ),
    ("Target page, context or browser has been closed", "retriable", "Browser crashed"),
    ("EACCES: permission denied, mkdir '/run/media/store'", "retriable", "Permission denied"),
    ("screenshot_path is NULL for site 42", "retriable", "Missing screenshot"),
    ("SqliteError: database is locked", "retriable", "DB lock"),
    ("spawn chromium-nice ENOENT", "retriable", "Chromium not found"),
    ("HTTP 503 Service Unavailable", "retriable", "Server error"),
    ("HTTP null (no response)", "retriable", "Server error"),
]
OUTREACH = [
    ("SMS blocked: outside business hours", "defer", "Business hours block"),
    ("Recipient opted out (STOP received)", "terminal", "Opted out"),
    ("Fake or invalid phone number +1 555 0100", "terminal", "Invalid phone"),
    ("gdpr_blocked: EU recipient without consent", "terminal", "GDPR blocked"),
    ("Cloudflare challenge blocked the form submit", "terminal", "Cloudflare blocked"),
    ("Resend API error: statusCode 429", "retriable", "Rate limited"),
    ("Twilio: rate limit exceeded", "retriable", "Rate limited"),
    ("Form submit Timeout after 20000ms", "retriable", "Form timeout"),
    ("net::ERR_NAME_NOT_RESOLVED at https://shop.example", "retriable", "DNS failure"),
]
ACCOUNT = [
    ("Account suspended for unusual activity", "terminal", "Account suspended"),
    ("Please solve the captcha to continue", "terminal", "Captcha required"),
    ("Session expired: logged out of the app", "terminal", "Logged out"),
    ("adb: device emulator-5554 offline", "retriable", "Device unreachable"),
]


@pytest.mark.parametrize(("message", "group", "label"), SITES)
def test_sites_patterns(classifier: Classifier, message: str, group: str, label: str):
    result = classifier.classify(message, pipeline="sites", stage="capture")
    assert (result.group, result.label) == (group, label)
    assert result.rule_id and result.rule_id.startswith("rules/sites.yaml:")


@pytest.mark.parametrize(("message", "group", "label"), OUTREACH)
def test_outreach_patterns(classifier: Classifier, message: str, group: str, label: str):
    result = classifier.classify(message, pipeline="outreach", stage="send")
    assert (result.group, result.label) == (group, label)


@pytest.mark.parametrize(("message", "group", "label"), ACCOUNT)
def test_account_and_device_rules_apply_to_every_pipeline(
    classifier: Classifier, message: str, group: str, label: str
):
    result = classifier.classify(message, pipeline="posting")
    assert (result.group, result.label) == (group, label)


def test_account_failures_are_terminal_and_infrastructure_ones_retriable(classifier: Classifier):
    suspended = classifier.classify("account suspended", pipeline="posting")
    dropped = classifier.classify(
        "peer went away",
        pipeline="posting",
        exception_types=("ConnectionResetError", "ConnectionError"),
    )
    assert (suspended.group, suspended.category, suspended.type) == (
        "terminal",
        "account",
        "suspended",
    )
    assert (dropped.group, dropped.category, dropped.type) == (
        "retriable",
        "infrastructure",
        "connection_dropped",
    )


def test_exception_types_map_when_no_message_rule_matches(classifier: Classifier):
    result = classifier.classify(
        "read took too long",
        pipeline="posting",
        exception_types=("ReadTimeout", "TimeoutError", "OSError"),
    )
    assert (result.group, result.category, result.type) == (
        Group.RETRIABLE,
        "infrastructure",
        "timeout",
    )
    assert result.rule_id.startswith("rules/common.yaml:")


def test_a_message_rule_wins_over_the_exception_type(classifier: Classifier):
    result = classifier.classify(
        "TimeoutError: account suspended", pipeline="posting", exception_types=("TimeoutError",)
    )
    assert result.label == "Account suspended"


def test_rules_are_scoped_by_pipeline(classifier: Classifier):
    assert classifier.classify("Social media platform", pipeline="outreach").group == "unknown"


def test_an_unmatched_message_is_unknown(classifier: Classifier):
    result = classifier.classify("the flux capacitor overheated", pipeline="sites")
    assert (result.group, result.label, result.rule_id) == (Group.UNKNOWN, "Unknown", None)


def ruleset_of(tmp_path: Path, text: str):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return Classifier(load_rules([path], tmp_path))


def test_the_first_rule_wins_even_when_a_later_one_matches_further_left(tmp_path: Path):
    c = ruleset_of(
        tmp_path,
        "rules:\n"
        "  - {match: 'quota', group: terminal, label: Quota}\n"
        "  - {match: 'HTTP 4\\d\\d', group: retriable, label: Client error}\n",
    )
    assert c.classify("HTTP 403 from the API: quota exhausted").label == "Quota"
    assert c.classify("HTTP 403 from the API").label == "Client error"


def test_python_only_syntax_and_unicode_classes_keep_their_python_meaning(tmp_path: Path):
    c = ruleset_of(
        tmp_path,
        "rules:\n"
        "  - {match: 'timeout(?! retry)', group: retriable, label: Bare timeout}\n"
        "  - {match: '(\\w+) again and \\1', group: terminal, label: Repeat}\n"
        "  - {match: '\\bcode \\d{3}\\b', group: retriable, label: Coded}\n",
    )
    assert c.classify("read timeout").label == "Bare timeout"
    assert c.classify("timeout retry scheduled").group == "unknown"
    assert c.classify("boom again and boom").label == "Repeat"
    assert c.classify("failed with code ٤٠٤").label == "Coded"  # Arabic-Indic digits are \d
    assert c.classify("failed with code 4040").group == "unknown"  # \b still holds
