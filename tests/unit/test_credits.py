"""Credits: XEdDSA, the receipt and claim codecs, the ledger's rules."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import nacl.bindings as sodium
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wgrelay import xeddsa
from wgrelay.errors import InvalidKey, RemoteProtocolError
from wgrelay.keys import PrivateKey, PublicKey, RelayIdentity
from wgrelay.proto.constants import MAX_CONTROL_SIZE, MsgType
from wgrelay.proto.envelope import MIN_CONTROL_SIZE
from wgrelay.proto.messages import Body, decode_body, encode_body
from wgrelay.proto.receipts import (
    CLAIM_LEN,
    RECEIPT_LEN,
    Claim,
    CreditQuery,
    CreditReport,
    Receipt,
    ReceiptBody,
    ReceiptRequest,
    Receipts,
    ReceiptsAck,
    RelayEarning,
    decode_receipt,
    make_claim,
    pack_records,
)
from wgrelay.relay.ledger import DAY_MS, MAX_BYTES, Ledger, Refusal

NOW_MS = 1_700_000_000_000

# ---------------------------------------------------------------- XEdDSA

VECTOR_KEY = bytes(range(1, 33))
VECTOR_RANDOM = bytes(range(64))
VECTOR_MESSAGE = b"wgrelay xeddsa test vector"
VECTOR_PUBLIC = "07a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c"
VECTOR_EDWARDS = "cfe058a4a189ee7230e43a1347ea1a7eef01f3557991a7fd3cec8915fd290a6c"
VECTOR_SIGNATURE = (
    "1c5aee7635729a65418cd79091842ff8601d99696b2c98db34360de4f6491c15"
    "36fffd98002bb00ecfa9d199b20338885302962a815c092c3a65fa6bc079a904"
)


def test_recorded_vector() -> None:
    """A fixed key, nonce randomness and message give the recorded signature
    (any change to the construction shows here)."""
    key = PrivateKey(VECTOR_KEY)
    assert key.public_key().raw.hex() == VECTOR_PUBLIC
    assert xeddsa.edwards_public(key.public_key().raw).hex() == VECTOR_EDWARDS
    sig = xeddsa.sign(key.raw, VECTOR_MESSAGE, VECTOR_RANDOM)
    assert sig.hex() == VECTOR_SIGNATURE
    assert xeddsa.verify(key.public_key().raw, VECTOR_MESSAGE, sig)


@pytest.mark.parametrize("seed", range(20))
def test_libsodium_verifies_the_signature_under_the_converted_key(seed: int) -> None:
    key = PrivateKey.generate()
    u = key.public_key().raw
    message = os.urandom(seed * 7)
    sig = xeddsa.sign(key.raw, message)
    a = xeddsa.edwards_public(u)
    assert a[31] & 0x80 == 0  # sign bit 0, as the spec says
    # libsodium's own Edwards -> Montgomery conversion takes A back to u
    assert sodium.crypto_sign_ed25519_pk_to_curve25519(a) == u
    nacl.signing.VerifyKey(a).verify(message, sig)  # plain Ed25519 (raises if bad)
    assert xeddsa.verify(u, message, sig)


def test_tampered_message_signature_or_key_fails() -> None:
    key = PrivateKey.generate()
    u = key.public_key().raw
    sig = xeddsa.sign(key.raw, b"receipt")
    assert not xeddsa.verify(u, b"receipT", sig)
    assert not xeddsa.verify(PrivateKey.generate().public_key().raw, b"receipt", sig)
    flipped = bytearray(sig)
    flipped[40] ^= 1
    assert not xeddsa.verify(u, b"receipt", bytes(flipped))
    assert not xeddsa.verify(u, b"receipt", sig[:63])
    # u = -1 (no Edwards point) and u >= p are refused, never raised
    assert not xeddsa.verify((xeddsa.P - 1).to_bytes(32, "little"), b"receipt", sig)
    assert not xeddsa.verify((xeddsa.P + 3).to_bytes(32, "little"), b"receipt", sig)


def test_a_key_with_its_top_bit_set_is_not_the_same_signer() -> None:
    """XEdDSA's verify refuses u >= p, the top bit included: the mask made
    u + 2^255 a second key under which every signature of u verified."""
    key = PrivateKey.generate()
    u = key.public_key().raw
    sig = xeddsa.sign(key.raw, b"receipt")
    twin = u[:31] + bytes((u[31] | 0x80,))
    assert xeddsa.verify(u, b"receipt", sig)
    assert not xeddsa.verify(twin, b"receipt", sig)
    with pytest.raises(InvalidKey):
        xeddsa.edwards_public(twin)


def test_signatures_are_randomized_but_all_verify() -> None:
    key = PrivateKey.generate()
    a, b = xeddsa.sign(key.raw, b"m"), xeddsa.sign(key.raw, b"m")
    assert a != b
    assert xeddsa.verify(key.public_key().raw, b"m", a)
    assert xeddsa.verify(key.public_key().raw, b"m", b)


# ---------------------------------------------------------------- codecs

RELAY = RelayIdentity.generate()


def receipt(
    key: PrivateKey,
    nbytes: int,
    seq: int = 1,
    sid: bytes = b"S" * 8,
    relay: PublicKey | None = None,
    time_ms: int = NOW_MS,
) -> Receipt:
    r = Receipt(relay or RELAY.public, key.public_key(), sid, seq, nbytes, time_ms)
    return r.signed_by(key)


def test_receipt_record_round_trip_and_signature() -> None:
    key = PrivateKey.generate()
    r = receipt(key, 12345)
    raw = r.encode()
    assert len(raw) == RECEIPT_LEN
    back = decode_receipt(raw)
    assert back == r
    assert back.verify()
    assert not Receipt(r.relay, r.peer, r.session_id, r.seq, 12346, r.time_ms, r.signature).verify()


def test_claim_needs_both_signatures() -> None:
    member = PrivateKey.generate()
    claim = make_claim(member, RELAY.public, NOW_MS)
    assert claim.member_signed()
    assert not claim.verify()  # not endorsed yet
    endorsed = claim.endorsed_by(RELAY)
    assert endorsed.verify()
    assert len(endorsed.encode()) == CLAIM_LEN
    other = make_claim(member, RelayIdentity.generate().public, NOW_MS)
    stolen = Claim(other.member, other.relay, NOW_MS, claim.member_signature)
    assert not stolen.member_signed()  # a signature for one relay names no other


BODIES = [
    ReceiptRequest(b"\x01" * 8, 7, 10**9),
    ReceiptBody(receipt(PrivateKey.generate(), 99)),
    CreditQuery(5, PrivateKey.generate().public_key()),
    CreditReport(
        6,
        PrivateKey.generate().public_key(),
        30,
        1000,
        400,
        3,
        (RelayEarning(RELAY.public, 1000, 2),),
    ),
    Receipts(
        tuple(receipt(PrivateKey.generate(), n) for n in range(5)),
        (make_claim(PrivateKey.generate(), RELAY.public, NOW_MS).endorsed_by(RELAY),),
    ),
    ReceiptsAck(3, 1),
]


@pytest.mark.parametrize("body", BODIES, ids=lambda b: type(b).__name__)
def test_bodies_round_trip_and_truncation_is_remote_error(body: Body) -> None:
    raw = encode_body(body)
    assert decode_body(body.TYPE, raw) == body
    for cut in (0, 1, len(raw) // 2, len(raw) - 1):
        if cut < len(raw):
            with pytest.raises(RemoteProtocolError):
                decode_body(body.TYPE, raw[:cut])
    with pytest.raises(RemoteProtocolError):
        decode_body(body.TYPE, raw + b"\x00")


@given(st.binary(max_size=1200), st.sampled_from([b.TYPE for b in BODIES]))
def test_arbitrary_bytes_raise_only_remote_errors(data: bytes, t: MsgType) -> None:
    with contextlib.suppress(RemoteProtocolError):
        decode_body(t, data)


def test_packed_batches_fit_one_datagram() -> None:
    key = PrivateKey.generate()
    rs = [receipt(key, n, sid=n.to_bytes(8, "big")) for n in range(20)]
    cs = [make_claim(key, RelayIdentity.generate().public, NOW_MS) for _ in range(3)]
    batches = pack_records(rs, cs)
    assert sum(len(b.receipts) for b in batches) == 20
    assert sum(len(b.claims) for b in batches) == 3
    for b in batches:
        assert len(encode_body(b)) <= MAX_CONTROL_SIZE - MIN_CONTROL_SIZE - 16


# ---------------------------------------------------------------- ledger


def ledger(tmp: Path | None = None, **kw: object) -> Ledger:
    led = Ledger(tmp / "credits.db" if tmp else None, **kw)  # type: ignore[arg-type]
    led.tick(NOW_MS)
    return led


def test_forged_replayed_and_lower_receipts_are_refused_and_counted() -> None:
    led = ledger()
    peer = PrivateKey.generate()
    good = receipt(peer, 1000, seq=1)
    assert led.add_receipt(good) is None
    # forged: signed by someone else's key, or the count changed after signing
    forged = receipt(PrivateKey.generate(), 5000, seq=2)
    forged = Receipt(forged.relay, peer.public_key(), forged.session_id, 2, 5000, NOW_MS,
                     forged.signature)  # fmt: skip
    assert led.add_receipt(forged) is Refusal.BAD_SIGNATURE
    inflated = Receipt(good.relay, good.peer, good.session_id, 2, 10**9, NOW_MS, good.signature)
    assert led.add_receipt(inflated) is Refusal.BAD_SIGNATURE
    # an exact copy (gossip) is a duplicate, not news and not a refusal
    assert led.add_receipt(good) is Refusal.DUPLICATE
    assert led.add_receipt(receipt(peer, 2000, seq=2)) is None
    assert led.add_receipt(receipt(peer, 3000, seq=2)) is Refusal.REPLAYED  # an old request
    assert led.add_receipt(receipt(peer, 1500, seq=3)) is Refusal.LOWER_COUNT
    assert led.add_receipt(receipt(peer, 9, seq=1, time_ms=NOW_MS + DAY_MS)) is Refusal.FUTURE
    old = receipt(peer, 9, seq=1, sid=b"O" * 8, time_ms=NOW_MS - 31 * DAY_MS)
    assert led.add_receipt(old) is Refusal.EXPIRED
    assert led.refused == {
        "bad_signature": 2,
        "replayed": 1,
        "lower_count": 1,
        "future": 1,
        "expired": 1,
    }
    assert led.duplicates == 1
    assert led.statement(peer.public_key().raw).used == 2000


def test_only_keys_the_policy_allows_count() -> None:
    outsider = PrivateKey.generate()
    led = ledger(allows=lambda k: k != outsider.public_key().raw)
    assert led.add_receipt(receipt(outsider, 100)) is Refusal.NOT_ALLOWED
    assert led.refused["not_allowed"] == 1


def test_balance_earned_by_operated_relays_minus_used_with_a_cap(tmp_path: Path) -> None:
    led = ledger(tmp_path, cap=5000)
    operator, a, b = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    other_relay = RelayIdentity.generate()
    assert led.add_claim(make_claim(operator, RELAY.public, NOW_MS).endorsed_by(RELAY)) is None
    led.add_receipt(receipt(a, 3000, sid=b"1" * 8))
    led.add_receipt(receipt(a, 4000, sid=b"2" * 8))  # a gives 7000: capped at 5000
    led.add_receipt(receipt(b, 1000, sid=b"1" * 8))
    led.add_receipt(receipt(operator, 600, sid=b"3" * 8, relay=other_relay.public))
    st_op = led.statement(operator.public_key().raw)
    assert (st_op.earned, st_op.used, st_op.balance) == (6000, 600, 5400)
    assert st_op.relays[0].receipts == 3
    assert led.balance(operator.public_key().raw) == 5400
    assert led.balance(a.public_key().raw) == -7000
    # a newer claim hands the relay over; an older one is refused
    newer = make_claim(a, RELAY.public, NOW_MS + 1).endorsed_by(RELAY)
    assert led.add_claim(newer) is None
    assert led.balance(operator.public_key().raw) == -600
    assert led.add_claim(make_claim(operator, RELAY.public, NOW_MS).endorsed_by(RELAY)) is (
        Refusal.STALE_CLAIM
    )
    unendorsed = make_claim(b, other_relay.public, NOW_MS)
    assert led.add_claim(unendorsed) is Refusal.BAD_SIGNATURE
    led.close()
    # a restart keeps every balance
    again = ledger(tmp_path, cap=5000)
    assert again.balance(a.public_key().raw) == 5000 + 1000 - 7000
    assert again.balance(operator.public_key().raw) == -600
    assert again.receipts_count() == 4
    # the window moves on: a month later nothing is left
    assert again.tick(NOW_MS + 31 * DAY_MS) == 4
    assert again.balance(a.public_key().raw) == 0
    again.close()


def test_the_cap_is_per_member_however_many_relays_it_runs() -> None:
    """A friend's receipts give an operator at most ``cap`` in all: relay keys
    cost nothing, and a cap per relay let k relays take k caps."""
    led = ledger(cap=5000)
    operator, friend = PrivateKey.generate(), PrivateKey.generate()
    relays = [RelayIdentity.generate() for _ in range(3)]
    for r in relays:
        assert led.add_claim(make_claim(operator, r.public, NOW_MS).endorsed_by(r)) is None
        assert led.add_receipt(receipt(friend, 4000, relay=r.public)) is None
    st_op = led.statement(operator.public_key().raw)
    assert st_op.earned == 5000  # not 3 x 4000
    assert sum(e.nbytes for e in st_op.relays) == st_op.earned
    assert sum(e.receipts for e in st_op.relays) == 3
    assert led.balance(friend.public_key().raw) == -12_000  # it signed for all of it


def test_huge_counts_and_times_are_refused_and_sums_never_overflow() -> None:
    """SQLite holds signed 64-bit integers and its sum() raises on overflow:
    a count or a time past 2^63 failed the insert, and counts that add up
    past it failed every statement (and balance) that included them."""
    led = Ledger(None)  # before its first tick, too
    peer, operator = PrivateKey.generate(), PrivateKey.generate()
    assert led.add_receipt(receipt(peer, 2**64 - 1)) is Refusal.IMPLAUSIBLE
    assert led.add_receipt(receipt(peer, 1, time_ms=2**64 - 1)) is Refusal.FUTURE
    far = make_claim(operator, RELAY.public, 2**64 - 1).endorsed_by(RELAY)
    assert led.add_claim(far) is Refusal.FUTURE
    led.tick(NOW_MS)
    # a claim dated ahead could never be replaced by the relay's next owner
    ahead = make_claim(operator, RELAY.public, NOW_MS + DAY_MS).endorsed_by(RELAY)
    assert led.add_claim(ahead) is Refusal.FUTURE
    assert led.add_claim(make_claim(operator, RELAY.public, NOW_MS).endorsed_by(RELAY)) is None
    n = 130  # 130 x 2^56 > 2^63
    for i in range(n):
        sid = i.to_bytes(8, "big")
        assert led.add_receipt(receipt(peer, MAX_BYTES, sid=sid)) is None
    st_peer = led.statement(peer.public_key().raw)
    assert (st_peer.used, st_peer.used_receipts) == (n * 2**56, n)
    assert led.balance(operator.public_key().raw) == led.cap
    assert led.refused == {"implausible": 1, "future": 3}


def test_small_order_keys_and_non_canonical_signatures_never_verify() -> None:
    """What the review checked of the verifier (libsodium's Ed25519 under the
    converted key): u = 0 and u = 1 (small order: y = -1, y = 0) verify
    nothing, not even a signature made up to fit them, and s + q (the same
    signature, not reduced) is refused."""
    key = PrivateKey.generate()
    sig = xeddsa.sign(key.raw, b"m")
    for u in (bytes(32), (1).to_bytes(32, "little")):
        assert not xeddsa.verify(u, b"m", sig)
        # R = identity, s = 0 satisfies sB = R + hA for any A of small order
        identity = (1).to_bytes(32, "little")
        assert not xeddsa.verify(u, b"m", identity + bytes(32))
    q = 2**252 + 27742317777372353535851937790883648493
    s = int.from_bytes(sig[32:], "little")
    unreduced = sig[:32] + (s + q).to_bytes(32, "little")
    assert xeddsa.verify(key.public_key().raw, b"m", sig)
    assert not xeddsa.verify(key.public_key().raw, b"m", unreduced)


def test_credits_options_of_the_other_use_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`credits claim` and the balance query share one parser: an option of
    the other use (--out for a balance, --json or --relay-key for a claim)
    was silently ignored; it is one clear line instead."""
    from wgrelay import cli

    member = PrivateKey.generate().public_key()
    relay = RelayIdentity.generate().public
    for argv, says in (
        (["credits", str(member), "--out", str(tmp_path / "x")], "--out is for credits claim"),
        (["credits", "claim", "--relay", str(relay), "--json"], "takes --key, --relay and --out"),
        (["credits", "claim", "--relay-key", str(relay)], "takes --key, --relay and --out"),
    ):
        assert cli.main(["--state-dir", str(tmp_path), *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert err[0].startswith("wgrelay: error: ")
        assert says in err[0]
    assert not (tmp_path / "x").exists()


def test_a_balance_reads_no_receipts(tmp_path: Path) -> None:
    """Contention looks up every session's members every 10 s and any
    allowed key may ask for a statement: summing an operator's receipts in
    SQLite at each lookup stalled the relay's loop in proportion to them
    (16 ms at 10,000). The sums are kept as receipts come and go, and are
    the same after a restart, a replaced receipt and the window's moving on."""
    led = ledger(tmp_path, cap=50_000)
    operator = PrivateKey.generate()
    assert led.add_claim(make_claim(operator, RELAY.public, NOW_MS).endorsed_by(RELAY)) is None
    signers = [PrivateKey.generate() for _ in range(4)]
    for i in range(400):
        key = signers[i % 4]
        assert led.add_receipt(receipt(key, 100 + i, sid=i.to_bytes(8, "big"))) is None
    # a newer count of one session replaces the old one; another is older
    assert led.add_receipt(receipt(signers[0], 5000, seq=2, sid=bytes(8))) is None
    old = receipt(signers[1], 700, sid=b"old-one!", time_ms=NOW_MS - 29 * DAY_MS)
    assert led.add_receipt(old) is None
    member = operator.public_key().raw

    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    led._conn.set_progress_handler(step, 100)  # every 100 SQLite VM instructions
    st = led.statement(member)
    led._conn.set_progress_handler(None, 100)
    assert steps < 5, steps  # (summed in SQL: 52 for these 402 receipts)
    by_signer = [sum(100 + i for i in range(k, 400, 4)) for k in range(4)]
    by_signer[0] += 5000 - 100
    by_signer[1] += 700
    assert st.earned == sum(min(n, 50_000) for n in by_signer)
    assert st.relays[0].receipts == 401
    assert led.statement(signers[0].public_key().raw).used == by_signer[0]
    led.close()
    again = ledger(tmp_path, cap=50_000)
    assert again.statement(member) == st
    assert again.tick(NOW_MS + 2 * DAY_MS) == 1  # the old one leaves the window
    after = again.statement(member)
    assert after.earned == st.earned - 700
    assert after.relays[0].receipts == 400
    assert again.statement(signers[1].public_key().raw).used == by_signer[1] - 700
    again.close()
