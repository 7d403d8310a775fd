"""The pure rules of webhook subscriptions: which events match, which filters the consumer gets,
the retry schedule, the address policy, the signature format and the subscription fold."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from standardwebhooks.webhooks import Webhook

from bus import webhook_secrets as secrets
from events import commands as c
from events import model as m
from events.envelope import Recorded, seal
from events.errors import ValidationError
from events.names import Ref
from events.webhooks import WebhookState, fold_webhook
from orchestrator.webhooks.sender import headers_for, retry_after
from orchestrator.webhooks.settings import (
    SCHEDULE_S,
    WebhookSettings,
    address_refusal,
    check_endpoint,
    check_url,
)  # fmt: skip
from orchestrator.webhooks.subscriptions import decide_webhook, matches, subject_filters


def sub(**kw: object) -> WebhookState:
    return WebhookState(name="w", exists=True, url="http://x/", **kw)  # type: ignore[arg-type]


def test_types_and_vm_patterns_select_events() -> None:
    s = sub(types=["io.virtbus.vm.*"], vm_pattern="web-*")
    assert matches(s, ce_type="io.virtbus.vm.started.v1", subject="vm/default/web-1")
    assert not matches(s, ce_type="io.virtbus.vm.started.v1", subject="vm/default/db-1")
    assert not matches(s, ce_type="io.virtbus.node.lost.v1", subject="node/n1")
    ns = sub(types=["io.virtbus.*"], vm_pattern="prod/*")
    assert matches(ns, ce_type="io.virtbus.vm.x.v1", subject="vm/prod/a")
    assert not matches(ns, ce_type="io.virtbus.vm.x.v1", subject="vm/dev/a")
    assert not matches(ns, ce_type="io.virtbus.node.lost.v1", subject="node/n1")
    anything = sub(types=["io.virtbus.*"])
    assert matches(anything, ce_type="io.virtbus.node.lost.v1", subject="node/n1")


@pytest.mark.parametrize(
    ("types", "vm", "filters"),
    [
        (["io.virtbus.vm.*"], "*", ["virt.vm.>"]),
        (["io.virtbus.vm.started.v1", "io.virtbus.node.*"], "*", ["virt.node.>", "virt.vm.>"]),
        (["io.virtbus.vm.*"], "web-1", ["virt.vm.*.web-1.>"]),
        (["io.virtbus.vm.*"], "prod/web-1", ["virt.vm.prod.web-1.>"]),
        (["io.virtbus.*"], "*", []),  # the whole stream
        (["io.virtbus.command.rejected.v1"], "*", []),  # recorded on any aggregate
    ],
)
def test_consumer_filters_are_coarse_and_never_overlap(
    types: list[str], vm: str, filters: list[str]
) -> None:
    assert subject_filters(sub(types=types, vm_pattern=vm)) == filters


def test_the_schedule_is_standard_webhooks_with_jitter_and_retry_after() -> None:
    s = WebhookSettings()
    assert s.attempts == 8
    assert SCHEDULE_S == (5, 300, 1800, 7200, 18000, 36000, 36000)
    for attempt, nominal in enumerate(SCHEDULE_S, 1):
        d = s.retry_delay(attempt)
        assert nominal * 0.9 <= d <= nominal * 1.1
    assert s.retry_delay(1, retry_after=120) == 120  # the endpoint asked for longer
    assert 4.5 <= s.retry_delay(1, retry_after=1) <= 5.5  # never sooner than the schedule
    assert s.retry_delay(1, retry_after=10**9) == 36000  # capped
    assert 0.0045 <= WebhookSettings(retry_scale=0.001).retry_delay(1) <= 0.0055


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert retry_after("7") == 7.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= (retry_after(later) or 0) <= 61
    assert retry_after("soon") is None and retry_after(None) is None


def test_the_address_policy() -> None:
    none: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    assert "loopback" in (address_refusal(ipaddress.ip_address("127.0.0.1"), none) or "")
    assert "private" in (address_refusal(ipaddress.ip_address("192.168.1.1"), none) or "")
    assert "link-local" in (address_refusal(ipaddress.ip_address("fe80::1"), none) or "")
    assert address_refusal(ipaddress.ip_address("93.184.216.34"), none) is None
    allowed = WebhookSettings(allow_nets=("127.0.0.0/8",)).networks()
    assert address_refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    with pytest.raises(ValidationError) as err:
        WebhookSettings(allow_nets=("nonsense",)).networks()
    assert err.value.field == "VIRTBUS_WEBHOOK_ALLOW_NETS"
    assert check_url("https://example.com/x") == ("example.com", 443, None)
    for bad in ("example.com/x", "http://", "http://h:99999/", "http://h/#frag"):
        with pytest.raises(ValidationError) as err:
            check_url(bad)
        assert err.value.field == "url"


_HOW = ", not globally routable (allow it with VIRTBUS_WEBHOOK_ALLOW_NETS)"


@pytest.mark.parametrize(
    ("addr", "kind"),
    [
        # carrier-grade NAT: is_private said no, so these got through before
        ("100.64.0.1", "a shared (carrier-grade NAT) address in 100.64.0.0/10"),
        ("100.100.100.200", "a shared (carrier-grade NAT) address in 100.64.0.0/10"),
        ("100.127.255.255", "a shared (carrier-grade NAT) address in 100.64.0.0/10"),
        ("192.0.0.100", "an IETF protocol assignment address in 192.0.0.0/24"),
        ("192.0.0.9", "an IETF protocol assignment address in 192.0.0.0/24"),
        ("198.18.0.1", "a benchmarking address in 198.18.0.0/15"),
        ("198.19.255.254", "a benchmarking address in 198.18.0.0/15"),
        ("169.254.169.254", "a link-local address in 169.254.0.0/16"),
        ("10.1.2.3", "a private address in 10.0.0.0/8"),
        ("127.0.0.1", "a loopback address in 127.0.0.0/8"),
        ("0.0.0.0", "a this-network address in 0.0.0.0/8"),
        ("224.0.0.1", "a multicast address in 224.0.0.0/4"),
        ("240.0.0.1", "a reserved address in 240.0.0.0/4"),
        ("203.0.113.9", "a documentation address in 203.0.113.0/24"),
        ("fc00::1", "a unique-local address in fc00::/7"),
        ("fd12:3456::1", "a unique-local address in fc00::/7"),
        ("fe80::1", "a link-local address in fe80::/10"),
        ("::1", "a loopback address in ::1/128"),
        ("::", "an unspecified address in ::/128"),
        ("2001:db8::1", "a documentation address in 2001:db8::/32"),
        ("3fff::1", "a documentation address in 3fff::/20"),
        ("64:ff9b:1::1", "a local-use NAT64 address in 64:ff9b:1::/48"),
        ("2001:2::1", "a benchmarking address in 2001:2::/48"),
        ("ff02::1", "a multicast address in ff00::/8"),
        ("4000::1", "a reserved address"),  # only the ipaddress module's catch-all knows it
        # IPv6 forms that reach an IPv4 address are judged by that address
        ("::ffff:10.0.0.1", "an IPv4-mapped address of 10.0.0.1, a private address in 10.0.0.0/8"),
        ("64:ff9b::6464:64c8", "a NAT64 address of 100.100.100.200, "
                               "a shared (carrier-grade NAT) address in 100.64.0.0/10"),
        ("2002:a9fe:a9fe::1", "a 6to4 address of 169.254.169.254, "
                              "a link-local address in 169.254.0.0/16"),
    ],
)  # fmt: skip
def test_every_address_that_is_not_globally_routable_is_refused_by_kind(
    addr: str, kind: str
) -> None:
    """A non-global address is refused, and the reason names its kind and how to allow it."""
    a = ipaddress.ip_address(addr)
    assert address_refusal(a, []) == f"{a} is {kind}{_HOW}"


@pytest.mark.parametrize(
    "addr",
    ["8.8.8.8", "1.1.1.1", "100.128.0.1", "2606:4700::1111", "::ffff:8.8.8.8",
     "64:ff9b::808:808", "2002:808:808::1"],
)  # fmt: skip
def test_globally_routable_addresses_pass(addr: str) -> None:
    """A global address (100.128.0.1 is just past the CGNAT block) has nothing to refuse."""
    assert address_refusal(ipaddress.ip_address(addr), []) is None


async def test_allow_nets_lets_a_refused_address_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """VIRTBUS_WEBHOOK_ALLOW_NETS is the one way past the policy: exactly the networks it names,
    also for an IPv4-mapped form of an allowed IPv4 address; anything else stays refused."""
    url = "http://100.100.100.200/hook"
    with pytest.raises(ValidationError) as err:
        await check_endpoint(url, WebhookSettings.from_env())
    assert err.value.field == "url"
    assert err.value.message == (
        "url: 100.100.100.200 refused: 100.100.100.200 is a shared (carrier-grade NAT) address "
        f"in 100.64.0.0/10{_HOW}"
    )
    monkeypatch.setenv("VIRTBUS_WEBHOOK_ALLOW_NETS", " 100.100.100.200/32 , fd00::/8")
    settings = WebhookSettings.from_env()
    assert settings.allow_nets == ("100.100.100.200/32", "fd00::/8")
    await check_endpoint(url, settings)  # no longer refused
    await check_endpoint("http://[fd00::5]:8080/", settings)
    await check_endpoint("http://[::ffff:100.100.100.200]/", settings)
    with pytest.raises(ValidationError) as err:
        await check_endpoint("http://100.100.100.201/", settings)  # the next one is not allowed
    assert err.value.message == (
        "url: 100.100.100.201 refused: 100.100.100.201 is a shared (carrier-grade NAT) address "
        f"in 100.64.0.0/10{_HOW}"
    )
    with pytest.raises(ValidationError) as err:
        await check_endpoint("http://[fc00::5]/", settings)  # fd00::/8 does not hold fc00::5
    assert (
        err.value.message
        == f"url: fc00::5 refused: fc00::5 is a unique-local address in fc00::/7{_HOW}"
    )


def test_signatures_verify_with_the_standardwebhooks_library() -> None:
    old, new = secrets.generate(), secrets.generate()
    body = b'{"specversion":"1.0"}'
    keys = [secrets.check_secret(new), secrets.check_secret(old)]
    hdrs = headers_for(msg_id="evt-1-w", body=body, keys=keys)
    assert len(hdrs["webhook-signature"].split(" ")) == 2
    for s in (old, new):
        Webhook(s).verify(body, hdrs, json_parse=False)
    with pytest.raises(ValidationError) as err:
        secrets.check_secret("whsec_!!!")
    assert err.value.field == "secret" and "!!!" not in err.value.message


def _rec(e: m.Event, seq: int, version: int) -> Recorded:
    env, _ = seal(e, ref=Ref.of("webhook", "w"), version=version, prevhash="", source="/t")
    return Recorded(env, seq, "virt.webhook._.w.x", "")


def test_the_subscription_fold_and_its_decisions() -> None:
    add = c.AddWebhook(name="w", url="http://x/", secret_ref="w.k", types=["io.virtbus.vm.*"])
    [subscribed] = decide_webhook(WebhookState(name="w"), add)
    assert isinstance(subscribed, m.WebhookSubscribed) and subscribed.from_seq == 0
    history = [_rec(subscribed, 7, 1)]
    s = fold_webhook("w", history)
    assert s.active and s.consumer == "webhook-w-7" and s.secret_ref == "w.k"
    with pytest.raises(ValidationError) as err:
        decide_webhook(s, add)
    assert err.value.field == "name"
    history.append(_rec(m.WebhookDisabled(reason="410"), 9, 2))
    s = fold_webhook("w", history)
    assert s.exists and not s.active and s.disabled_reason == "410"
    [removed] = decide_webhook(s, c.RemoveWebhook(name="w"))
    history.append(_rec(removed, 11, 3))
    assert not fold_webhook("w", history).exists
    again = decide_webhook(fold_webhook("w", history), add)  # a new life under the same name
    history.append(_rec(again[0], 20, 4))
    assert fold_webhook("w", history).consumer == "webhook-w-20"
    start = c.AddWebhook(name="w", url="http://x/", secret_ref="k", from_start=True)
    assert decide_webhook(WebhookState(name="w"), start)[0].from_seq == 1  # type: ignore[attr-defined]
