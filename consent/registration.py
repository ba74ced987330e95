"""Signed node registrations (protos/sovereign/v1/coordinator.proto).

A node joins a coordinator's network with a ``NodeRegistration`` statement it signs with its
did:key (W3C Data Integrity, ``eddsa-jcs-2022``; the SM2 chain as well in the gm profile):
its name, the endpoint the coordinator reaches it at, its region and residency label, its
crypto profile, the datasets and scope tiers it offers and its TLS CA. A name registered by
one DID moves to another only along ``consent.rotation`` statements the old keys signed. The
node issues the statement; the coordinator and every requester verify it with the same
function, so a registration is never taken on the coordinator's word.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from consent.errors import ConsentError, SignatureError
from consent.grants import Scope
from consent.identity import Identity
from consent.integrity import SM2_FRAGMENT, format_time, sign_document, verify_document

VERSION = 1
REGISTRATION_TYPE = "NodeRegistration"
MAX_NAME = 64
MAX_TEXT = 512
MAX_CA_PEM = 16 * 1024
MAX_DATASETS = 256


class RegistrationError(ConsentError):
    """A registration or rotation statement is malformed, unsigned or signed by another key."""


@dataclass(frozen=True)
class Registration:
    """A verified NodeRegistration."""

    did: str
    name: str
    endpoint: str
    region: str
    residency: str
    profile: str
    datasets: dict[str, list[str]]
    tls_ca: str
    issued: datetime
    sm2_public_key: str | None = None
    document: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The node's SuperNode authentication key (OpenSSH P-384 line), None if it trains no
    #: models; the coordinator registers exactly these keys with its SuperLink.
    flower_key: str | None = None

    def offers(self, dataset: str) -> bool:
        return dataset in self.datasets


def _text(document: dict[str, Any], key: str, limit: int = MAX_TEXT) -> str:
    value = document.get(key)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise RegistrationError(f"the statement's {key!r} must be a non-empty string of at most "
                                f"{limit} characters")
    return value


def _time(document: dict[str, Any]) -> datetime:
    try:
        moment = datetime.fromisoformat(_text(document, "issued", 40).replace("Z", "+00:00"))
    except ValueError:
        raise RegistrationError("the statement's 'issued' is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise RegistrationError("the statement's 'issued' must carry a time zone (end it with Z)")
    return moment


def _endpoint(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise RegistrationError(f"the endpoint {value[:80]!r} is not HOST:PORT with a port "
                                "1-65535")
    return value


def _datasets(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or len(value) > MAX_DATASETS:
        raise RegistrationError("the registration's 'datasets' must map dataset names to lists "
                                "of scope tiers")
    tiers = {s.value for s in Scope}
    out: dict[str, list[str]] = {}
    for name, scopes in value.items():
        if not isinstance(scopes, list) or not all(s in tiers for s in scopes):
            raise RegistrationError(f"dataset {str(name)[:64]!r} must list scope tiers from "
                                    f"{sorted(tiers)}")
        out[str(name)] = sorted(set(scopes))
    return out


def _signed_by_did(document: Any, kind: str) -> tuple[dict[str, Any], str]:
    if not isinstance(document, dict) or document.get("type") != kind:
        raise RegistrationError(f"the statement is not a {kind}")
    if document.get("v") != VERSION:
        raise RegistrationError(f"the {kind} must have v = {VERSION}")
    gm = document.get("profile") == "gm"
    try:
        signer = verify_document(document, require_sm2=gm)
    except SignatureError as exc:
        raise RegistrationError(f"the {kind} signature is invalid: {exc}") from None
    if signer != document.get("did"):
        raise RegistrationError(f"the {kind} is signed by another DID than the one it names")
    return document, signer


FLOWER_KEY_PREFIX = "ecdsa-sha2-nistp384 "


def check_flower_key(line: Any) -> str:
    """``line`` if it is an ECDSA P-384 OpenSSH public key (a SuperNode's authentication
    key), else RegistrationError. The kernel's check, so that every reader of a registration
    (and ``fl.deploy``) applies the same one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(line, str) or not line.startswith(FLOWER_KEY_PREFIX) or len(line) > 400:
        raise RegistrationError("the registration's flower_key must be an "
                                "'ecdsa-sha2-nistp384 ...' OpenSSH public key line")
    try:
        key = serialization.load_ssh_public_key(line.encode("ascii"))
    except (ValueError, UnicodeError):
        raise RegistrationError("the registration's flower_key is not a readable OpenSSH "
                                "public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise RegistrationError("the registration's flower_key must be on the P-384 curve")
    return line.strip()


def issue_registration(identity: Identity, *, name: str, endpoint: str, region: str,
                       residency: str, datasets: dict[str, list[str]], tls_ca_pem: bytes,
                       now: datetime | None = None,
                       flower_key: str | None = None) -> dict[str, Any]:
    """The node's signed NodeRegistration (checked by ``verify_registration`` before return)."""
    statement: dict[str, Any] = {
        "type": REGISTRATION_TYPE, "v": VERSION, "did": identity.did, "name": name,
        "endpoint": endpoint, "region": region, "residency": residency,
        "profile": identity.profile, "datasets": {k: sorted(set(v)) for k, v in datasets.items()},
        "tls_ca": tls_ca_pem.decode("ascii"), "issued": format_time(now or datetime.now(UTC)),
    }
    if flower_key is not None:
        statement["flower_key"] = flower_key
    if identity.profile == "gm" and identity.sm2 is not None:
        statement["sm2PublicKey"] = identity.sm2.public_key().to_hex()
    document = sign_document(statement, identity)
    verify_registration(document)
    return document


def verify_registration(document: Any) -> Registration:
    """Verify a NodeRegistration's signature and shape; RegistrationError otherwise."""
    document, did = _signed_by_did(document, REGISTRATION_TYPE)
    profile = document.get("profile")
    if profile not in ("intl", "gm"):
        raise RegistrationError("the registration's profile must be 'intl' or 'gm'")
    sm2 = None
    if profile == "gm":
        sm2 = _text(document, "sm2PublicKey", 130)
        proof = document["proof"]
        if proof[0].get("verificationMethod") != f"{did}{SM2_FRAGMENT}{sm2}":
            raise RegistrationError("the registration's sm2PublicKey is not its SM2 proof's key")
    tls_ca = _text(document, "tls_ca", MAX_CA_PEM)
    if "BEGIN CERTIFICATE" not in tls_ca:
        raise RegistrationError("the registration's tls_ca must be a PEM certificate")
    flower_key = document.get("flower_key")
    if flower_key is not None:
        flower_key = check_flower_key(flower_key)
    return Registration(
        did=did, name=_text(document, "name", MAX_NAME),
        endpoint=_endpoint(_text(document, "endpoint", 300)),
        region=_text(document, "region", MAX_NAME), residency=_text(document, "residency"),
        profile=profile, datasets=_datasets(document.get("datasets")), tls_ca=tls_ca,
        issued=_time(document), sm2_public_key=sm2, document=document, flower_key=flower_key)
