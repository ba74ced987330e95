"""SM3 (GB/T 32905-2016), HMAC-SM3 and the SM2 user-information hash Z_A, against the shared
vectors read in place:

- ``sm3/sm3_vectors.json``: the two Annex A messages, and three Z_A / Z_B values on the SM2
  example curve, each with its full preimage and the parts it is built from;
- ``sm3/wycheproof_hmac_sm3_test.json``: all 174 Wycheproof HMAC-SM3 cases (valid tags must
  match, invalid ones must not; 128-bit groups compare the truncated tag).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from consent.sm import SM2Curve, SM2PublicKey, hmac_sm3, sm2_kdf, sm2_za, sm3

# Parametrisation runs at collection time, before fixtures exist, so the folder is located the
# way the shared_dir fixture does it: next to the repository, read in place.
VECTORS = Path(__file__).resolve().parents[3] / "shared" / "vectors"
SM3_FILE = json.loads((VECTORS / "sm3/sm3_vectors.json").read_text())
HMAC_FILE = json.loads((VECTORS / "sm3/wycheproof_hmac_sm3_test.json").read_text())


def _hmac_cases() -> list[pytest.param]:
    cases = []
    for group in HMAC_FILE["testGroups"]:
        for test in group["tests"]:
            cases.append(
                pytest.param(group["tagSize"], test, id=f"tc{test['tcId']}-{test['result']}")
            )
    return cases


def test_vector_files_are_the_ones_documented(shared_dir: Path) -> None:
    # The fixture and the collection-time path must agree, or we would test another copy.
    assert (shared_dir / "vectors").resolve() == VECTORS.resolve()
    assert HMAC_FILE["numberOfTests"] == len(_hmac_cases()) == 174


@pytest.mark.parametrize("vector", SM3_FILE["vectors"], ids=lambda v: v["id"])
def test_sm3_annex_a(vector: dict) -> None:
    message = bytes.fromhex(vector["msg_hex"])
    assert message == vector["msg_ascii"].encode()
    assert sm3(message).hex() == vector["digest"].lower()


@pytest.mark.parametrize("vector", SM3_FILE["za_vectors"]["vectors"], ids=lambda v: v["id"])
def test_za_preimage_and_digest(vector: dict) -> None:
    curve_hex = SM3_FILE["za_vectors"]["curve"]
    curve = SM2Curve.from_hex(
        "example-fp256", **{k: curve_hex[k] for k in ("p", "a", "b", "gx", "gy", "n")}
    )
    user_id = vector["id_ascii"].encode()
    # The preimage is exactly ENTL || ID || a || b || xG || yG || xA || yA ...
    parts = (
        [vector["entl"], user_id.hex()]
        + [curve_hex[k] for k in ("a", "b", "gx", "gy")]
        + [vector["xA"], vector["yA"]]
    )
    assert "".join(parts).lower() == vector["input_hex"].lower()
    assert int(vector["entl"], 16) == 8 * len(user_id)
    assert sm3(bytes.fromhex(vector["input_hex"])).hex() == vector["digest"].lower()
    # ... and the library's Z_A builds the same preimage from the key and the ID.
    public = SM2PublicKey(int(vector["xA"], 16), int(vector["yA"], 16), curve)
    assert sm2_za(public, user_id).hex() == vector["digest"].lower()


def test_sm3_detects_a_changed_bit() -> None:
    assert sm3(b"abc") != sm3(b"abb")
    assert len(sm3(b"")) == 32


def test_kdf_is_counter_mode_sm3() -> None:
    # GB/T 32918.4 §5.4.3: Ha_i = SM3(Z || ct_i) with a 32-bit counter starting at 1.
    z = b"shared secret"
    expected = sm3(z + b"\x00\x00\x00\x01") + sm3(z + b"\x00\x00\x00\x02")
    assert sm2_kdf(z, 40) == expected[:40]
    assert sm2_kdf(z, 0) == b""


@pytest.mark.parametrize(("tag_bits", "test"), _hmac_cases())
def test_wycheproof_hmac_sm3(tag_bits: int, test: dict) -> None:
    tag = hmac_sm3(bytes.fromhex(test["key"]), bytes.fromhex(test["msg"]))[: tag_bits // 8]
    expected = bytes.fromhex(test["tag"])
    if test["result"] == "valid":
        assert tag == expected
    else:
        assert tag != expected
