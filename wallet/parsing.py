"""Parsing of the wallet's human inputs: durations, times, purposes, scopes and requester DIDs.

Durations follow the compact Go/systemd style (``24h``, ``90m``, ``3d``, ``1h30m``), read by
``consent.timespec`` like every tool's ``--since`` / ``--until``. Purposes and scopes come
from the consent kernel's controlled vocabulary; a near miss gets the closest known names suggested
(``difflib``), as the dynamic-authorisation rules require one concrete purpose per grant.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from datetime import timedelta

from consent import timespec
from consent.did import resolve
from consent.errors import DIDError
from consent.grants import MAX_PURPOSE_TEXT, PURPOSES, Scope
from wallet.errors import (
    InvalidDuration,
    InvalidInput,
    InvalidPurpose,
    InvalidRequester,
    InvalidScope,
    TTLTooLong,
)

# Policy ceiling of the dynamic-authorisation gateway: no grant outlives 72 hours.
MAX_TTL = timedelta(hours=72)


def parse_duration(text: str) -> timedelta:
    """``24h`` / ``90m`` / ``3d`` / ``1h30m`` -> timedelta (``consent.timespec``, the syntax
    every tool shares); anything else is ``InvalidDuration``."""
    try:
        return timespec.parse_duration(text)
    except timespec.TimeSpecError as exc:
        raise InvalidDuration(str(exc)) from None


def format_duration(delta: timedelta) -> str:
    """A short human form of a duration: ``2d 3h``, ``45m``, ``expired``."""
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0m"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [(days, "d"), (hours, "h"), (minutes, "m")]
    return " ".join(f"{n}{unit}" for n, unit in parts if n) or "<1m"


def check_ttl(ttl: timedelta, limit: timedelta = MAX_TTL) -> timedelta:
    """Refuse a grant window over ``limit`` before anything is signed."""
    if ttl > limit:
        hours = limit.total_seconds() / 3600
        raise TTLTooLong(
            f"a grant may last at most {hours:g} hours; choose a shorter --ttl, like 24h"
        )
    return ttl


def closest_purposes(purpose: str, n: int = 3) -> list[str]:
    """The known purposes nearest to ``purpose`` (edit similarity), best first."""
    return difflib.get_close_matches(purpose.strip().lower(), list(PURPOSES), n=n, cutoff=0.4)


def check_purpose(purpose: str) -> str:
    """Return the purpose when it is in the controlled vocabulary, else suggest close ones."""
    if purpose in PURPOSES:
        return purpose
    close = closest_purposes(purpose)
    hint = (
        f"did you mean {' or '.join(repr(p) for p in close)}?"
        if close
        else f"known purposes are {', '.join(sorted(PURPOSES))}."
    )
    raise InvalidPurpose(f"{purpose!r} is not a known purpose; {hint}")


def check_purpose_text(text: str) -> str:
    """The free text beside the purpose is bounded, as the kernel's grant schema requires."""
    if len(text) > MAX_PURPOSE_TEXT:
        raise InvalidInput(
            f"--purpose-text may be at most {MAX_PURPOSE_TEXT} characters; shorten it"
        )
    return text


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Validate scope tiers (at least one), dropping duplicates but keeping order."""
    known = [s.value for s in Scope]
    result: list[str] = []
    for scope in scopes:
        if scope not in known:
            raise InvalidScope(f"{scope!r} is not a scope tier; use one of {', '.join(known)}")
        if scope not in result:
            result.append(scope)
    if not result:
        raise InvalidScope(f"give at least one --scope ({', '.join(known)})")
    return result


def check_requester(did: str) -> str:
    """The requester must be an Ed25519 did:key (the only kind that can sign queries)."""
    try:
        resolved = resolve(did)
    except DIDError as exc:
        raise InvalidRequester(f"--requester is not a valid did:key: {exc}") from None
    if resolved.ed25519 is None:
        raise InvalidRequester("--requester must be an Ed25519 did:key (did:key:z6Mk...)")
    return did
