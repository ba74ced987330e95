"""Crypto benchmark: SM4-GCM (GB/T 32907 / RFC 8998) throughput through ``consent.sm.SM4GCM``
against OpenSSL measured in the same run, plus the other costs the profiles pay.

Prints medians over repeats, then exactly one line of JSON. The headline ratio is

    sm4_gcm_vs_openssl = SM4GCM.encrypt on 1 MiB  /  `openssl speed -evp <mode> -bytes 1048576`

The system ``openssl`` 3.0 has no SM4-GCM (it arrived in OpenSSL 3.2), so when
``speed -evp sm4-gcm`` is refused the closest mode it has, SM4-CTR (the GCM keystream without
GHASH), is the baseline; the JSON names the mode actually used. As a second, like-for-like
reference, ``sm4_gcm_vs_raw_evp`` divides by raw SM4-GCM through ``cryptography``'s own
``Cipher`` (the same OpenSSL build, without this project's wrapper).

Also reported: 64-byte SM4-GCM field encryptions per second (the vault's per-cell call),
Ed25519 verifications per second (pynacl), SM2 signatures and verifications per second
(gmssl arithmetic), the cost of opening a ``gm`` session, and sealed-envelope round-trip cost
per KiB (seal + open, request direction) for ``intl`` (NaCl box) and ``gm`` (session open).

Usage: python bench/crypto.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nacl.signing
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from consent.envelope import open_sealed, seal
from consent.envelope_gm import GMSession, GMSessionCache
from consent.identity import Identity
from consent.sm import SM4GCM, SM2PrivateKey

MIB = 1 << 20
TARGET = 0.9


def median_seconds(func: Callable[[], object], repeats: int, inner: int = 1) -> float:
    """Median wall time of one call, over ``repeats`` timings of ``inner`` calls each."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            func()
        samples.append((time.perf_counter() - started) / inner)
    return statistics.median(samples)


def openssl_speed(mode: str, seconds: int) -> float | None:
    """Bytes/second from ``openssl speed -evp mode`` on 1 MiB blocks; None if refused.

    ``-elapsed`` makes OpenSSL divide by wall-clock time, as the Python timings do; its
    default (CPU time) would flatter it whenever the machine is shared.
    """
    binary = shutil.which("openssl")
    if binary is None:
        return None
    cmd = [binary, "speed", "-mr", "-elapsed", "-evp", mode, "-bytes", str(MIB)]
    result = subprocess.run([*cmd, "-seconds", str(seconds)], capture_output=True, text=True)
    # Machine-readable line: +F:<id>:<name>:<bytes per second for each block size>
    match = re.search(r"^\+F:\d+:[^:]+:([\d.]+)", result.stdout, re.MULTILINE)
    if result.returncode != 0 or match is None:
        return None
    return float(match.group(1))


def bench_sm4(quick: bool) -> dict[str, object]:
    rounds, inner = (3, 4) if quick else (7, 8)
    key, nonce, message = os.urandom(16), os.urandom(12), os.urandom(MIB)
    aead = SM4GCM(key)

    def raw_evp() -> bytes:
        encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
        return encryptor.update(message) + encryptor.finalize() + encryptor.tag

    mode = "sm4-gcm" if openssl_speed("sm4-gcm", 1) is not None else "sm4-ctr"
    # Paired rounds: ours, the raw binding and OpenSSL back to back, so that load from
    # other processes on the machine hits all three alike; the ratio is a median of pairs.
    ours, raw, baseline, ratios, raw_ratios = [], [], [], [], []
    for _ in range(rounds):
        ours.append(MIB / median_seconds(lambda: aead.encrypt(nonce, message), inner))
        raw.append(MIB / median_seconds(raw_evp, inner))
        speed = openssl_speed(mode, 1)
        if speed is None:
            raise SystemExit("openssl speed could not measure SM4 at all: is openssl installed?")
        baseline.append(speed)
        ratios.append(ours[-1] / speed)
        raw_ratios.append(ours[-1] / raw[-1])
    sealed = aead.encrypt(nonce, message)
    decrypt = MIB / median_seconds(lambda: aead.decrypt(nonce, sealed), inner)

    field, aad = os.urandom(64), b"customers.email"
    many = 2000 if quick else 10000
    per_field = median_seconds(lambda: aead.encrypt(os.urandom(12), field, aad), rounds, many)
    med = statistics.median
    print(f"SM4-GCM encrypt 1 MiB via SM4GCM     {med(ours) / MIB:8.1f} MiB/s")
    print(f"SM4-GCM decrypt 1 MiB via SM4GCM     {decrypt / MIB:8.1f} MiB/s")
    print(f"SM4-GCM raw cryptography Cipher      {med(raw) / MIB:8.1f} MiB/s")
    print(f"openssl speed -evp {mode:<16} {med(baseline) / MIB:8.1f} MiB/s (system openssl CLI)")
    print(f"SM4-GCM 64-byte field encryptions    {1 / per_field:10.0f} /s (random nonce each)")
    return {
        "sm4_gcm_vs_openssl": round(med(ratios), 3),
        "openssl_baseline_mode": mode,
        "sm4_gcm_vs_raw_evp": round(med(raw_ratios), 3),
        "sm4_gcm_mib_s": round(med(ours) / MIB, 1),
        "sm4_gcm_decrypt_mib_s": round(decrypt / MIB, 1),
        "openssl_speed_mib_s": round(med(baseline) / MIB, 1),
        "sm4_gcm_64b_per_s": round(1 / per_field),
    }


def bench_signatures(quick: bool) -> dict[str, object]:
    repeats = 5 if quick else 11
    signing = nacl.signing.SigningKey.generate()
    signed = signing.sign(b"x" * 200)
    verify_key = signing.verify_key
    ed = median_seconds(lambda: verify_key.verify(signed), repeats, 500 if quick else 3000)
    sm2 = SM2PrivateKey.generate()
    signature = sm2.sign(b"grant")
    sm2_inner = 10 if quick else 40
    sign = median_seconds(lambda: sm2.sign(b"grant"), repeats, sm2_inner)
    verify = median_seconds(
        lambda: sm2.public_key().verify(b"grant", signature), repeats, sm2_inner
    )
    print(f"Ed25519 verifications (pynacl)       {1 / ed:10.0f} /s")
    print(f"SM2 signatures (gmssl arithmetic)    {1 / sign:10.0f} /s")
    print(f"SM2 verifications                    {1 / verify:10.0f} /s")
    return {
        "ed25519_verify_per_s": round(1 / ed),
        "sm2_sign_per_s": round(1 / sign),
        "sm2_verify_per_s": round(1 / verify),
    }


def bench_envelopes(quick: bool) -> dict[str, object]:
    repeats = 5 if quick else 11
    inner = 20 if quick else 100
    requester, node = Identity.generate("gm"), Identity.generate("gm")
    lookup = {requester.did: requester.sm2.public_key()}.__getitem__
    results: dict[str, object] = {}

    # One session, established once; its cost is reported on its own.
    def open_session() -> None:
        session = GMSession.open_to(node.did, node.sm2.public_key(), requester)
        GMSessionCache().open(session.seal(b"hello"), node, lookup)

    session_cost = median_seconds(open_session, 3 if quick else 7)
    session = GMSession.open_to(node.did, node.sm2.public_key(), requester)
    cache = GMSessionCache()
    cache.open(session.seal(b"hello"), node, lookup)
    session.open_reply(cache.seal_reply(session.session_id, b"ok"))
    print(f"gm session opening (SM2 enc+sign+verify+dec) {session_cost * 1e3:6.1f} ms")

    for kib in (1, 64):
        message = os.urandom(kib * 1024)
        intl = median_seconds(
            lambda m=message: open_sealed(seal(m, requester, node.did), node), repeats, inner
        )
        gm = median_seconds(
            lambda m=message: cache.open(session.seal(m), node, lookup), repeats, inner
        )
        print(
            f"envelope round trip {kib:3d} KiB  intl {intl / kib * 1e6:7.1f} µs/KiB"
            f"   gm {gm / kib * 1e6:7.1f} µs/KiB"
        )
        results[f"intl_envelope_us_per_kib_{kib}k"] = round(intl / kib * 1e6, 2)
        results[f"gm_envelope_us_per_kib_{kib}k"] = round(gm / kib * 1e6, 2)
    results["gm_session_open_ms"] = round(session_cost * 1e3, 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about 15 s)")
    args = parser.parse_args()
    summary: dict[str, object] = {"bench": "crypto"}
    sm4 = bench_sm4(args.quick)
    summary["sm4_gcm_vs_openssl"] = sm4.pop("sm4_gcm_vs_openssl")
    summary["target"] = TARGET
    summary.update(sm4)
    summary.update(bench_signatures(args.quick))
    summary.update(bench_envelopes(args.quick))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
