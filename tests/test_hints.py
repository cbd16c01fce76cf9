"""mDNS answers are hints, not members: bounded in number and
in the dials they cause, forgotten unless the peer's own announcement follows, never displacing
an authenticated peer."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from pathlib import Path

from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

from p2pai.identity import Identity
from p2pai.overlay import Overlay, OverlayConfig
from p2pai.overlay.discovery import SERVICE_TYPE
from p2pai.overlay.membership import HINT_BURST, HINT_RATE, HINT_TTL, MAX_HINTS, AddressBook
from p2pai.token import NetworkKeys
from ports import free_port


def peer() -> str:
    return Identity.generate().peer_id


def addr(peer_id: str, port: int = 4001) -> list[str]:
    return [f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id}"]


def test_hints_are_bounded_in_rate_and_in_number() -> None:
    book = AddressBook(peer(), hint_ttl=1e9)
    for _ in range(256):  # a burst of forged answers at one moment
        book.hint(p := peer(), addr(p), now=0.0)
    assert book.hints() == HINT_BURST
    assert book.dropped_hints["rate_limited"] == 256 - HINT_BURST
    for second in range(1, 200):  # a steady stream, within the rate
        book.hint(p := peer(), addr(p), now=float(second))
    assert book.hints() == MAX_HINTS
    assert book.dropped_hints["full"] > 0


def test_a_hint_is_forgotten_unless_the_peers_own_announcement_follows() -> None:
    book = AddressBook(peer())
    hinted, confirmed = peer(), peer()
    book.hint(hinted, addr(hinted), now=0.0)
    book.hint(confirmed, addr(confirmed), now=0.0)
    book.learn(confirmed, addr(confirmed, 5000), now=1.0)  # its own announcement
    assert book.unconfirmed() == {hinted}
    assert book.targets(now=HINT_TTL + 0.5) == {confirmed: ["/ip4/127.0.0.1/tcp/5000"]}
    assert book.dropped_hints["unconfirmed"] == 1


def test_hints_never_displace_or_rewrite_authenticated_peers() -> None:
    book = AddressBook(peer(), max_peers=4)
    members = [peer() for _ in range(3)]
    for member in members:
        book.learn(member, addr(member), now=0.0)
    old_hint, new_member = peer(), peer()
    book.hint(old_hint, addr(old_hint), now=0.0)
    book.hint(hint := peer(), addr(hint), now=0.0)  # the book is full
    assert book.dropped_hints["full"] == 1
    book.hint(members[0], addr(members[0], 6666), now=0.0)  # a hint does not rewrite a member's address
    assert book.targets(0.0)[members[0]] == ["/ip4/127.0.0.1/tcp/4001"]
    book.learn(new_member, addr(new_member), now=0.5)  # an authenticated peer takes the hint's place
    assert set(book.targets(0.5)) == {*members, new_member}
    assert book.dropped_hints["displaced"] == 1
    book.learn(fifth := peer(), addr(fifth), now=0.5)  # only members left: a fifth is refused, none evicted
    assert set(book.targets(0.5)) == {*members, new_member}


async def test_forged_mdns_answers_from_a_non_member_make_no_member_and_few_dials(tmp_path: Path) -> None:
    """256 forged answers for random peer ids, registered by a zeroconf instance bound to 127.0.0.1,
    each pointing at a port where nothing listens; a real member (joined by bootstrap) stays."""
    keys = NetworkKeys(*(os.urandom(32) for _ in range(5)), "forged-mdns-test")

    def config(name: str, mdns: bool, bootstrap: list[str]) -> OverlayConfig:
        return OverlayConfig(data_dir=tmp_path / name, keys=keys, name=name, version="test", roles=[],
                             listen=[f"/ip4/127.0.0.1/tcp/{free_port()}"], bootstrap=bootstrap, mdns=mdns,
                             mdns_interfaces=["127.0.0.1"])

    victim = Overlay(config("victim", True, []))
    await victim.start()
    member = Overlay(config("member", False, victim.self_member().addrs))
    await member.start()
    forger = AsyncZeroconf(interfaces=["127.0.0.1"])
    try:
        for _ in range(50):
            if [m.peer_id for m in victim.members() if m.online] == [member.peer_id]:
                break
            await asyncio.sleep(0.1)
        nothing = free_port()
        started = time.monotonic()
        broadcasts = []
        for index in range(256):
            forged = peer()
            # Every 8th answer also names an IP its A record does not: that address is dropped.
            shown = "127.0.0.9" if index % 8 == 0 else "127.0.0.1"
            info = AsyncServiceInfo(SERVICE_TYPE, f"{forged}.{SERVICE_TYPE}", port=nothing,
                                    addresses=[socket.inet_aton("127.0.0.1")],
                                    properties={"id": forged, "net": keys.discriminator,
                                                "a0": f"/ip4/{shown}/tcp/{nothing}/p2p/{forged}"})
            broadcasts.append(await forger.async_register_service(info, cooperating_responders=True))
        await asyncio.gather(*broadcasts)
        await asyncio.sleep(5)
        elapsed = time.monotonic() - started
        stats = victim.stats()
        assert [m.peer_id for m in victim.members()] == [member.peer_id]
        assert [m.online for m in victim.members()] == [True]
        assert 0 < stats["hints"] <= MAX_HINTS
        assert 0 < stats["dials"] <= HINT_BURST + HINT_RATE * elapsed + 1, (stats, elapsed)
        dropped = stats["hints_dropped"]
        assert dropped.get("rate_limited", 0) + dropped.get("mdns_busy", 0) > 100, stats
        assert dropped.get("mdns_address", 0) > 0, stats
    finally:
        await forger.async_close()
        await member.stop()
        await victim.stop()


def test_a_member_still_online_stays_in_the_book_without_announcing_again() -> None:
    book = AddressBook(peer(), ttl=10.0)
    quiet = peer()
    book.learn(quiet, addr(quiet), now=0.0)
    book.touch(quiet, now=8.0)  # seen online, no new announcement (a large swarm's gap is minutes)
    assert quiet in book.targets(now=15.0)
    assert book.targets(now=19.0) == {}
