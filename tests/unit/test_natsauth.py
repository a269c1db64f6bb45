"""nkeys, NATS JWTs, permissions and the rendered server config (no server here; the real
server checks them in tests/integration/test_nats_auth_callout.py)."""

from __future__ import annotations

import base64
import json

import bcrypt
import nkeys
import pytest

from echo_shared.natsauth import (
    CALLOUT_SUBJECT,
    CalloutConfig,
    NatsPermissions,
    StaticUser,
    callout_permissions,
    hash_password,
    js_consumer_permissions,
    js_stream_permissions,
    kv_permissions,
    object_store_permissions,
    render_auth_config,
    request_permissions,
    responder_permissions,
)
from echo_shared.natsjwt import (
    PREFIX_ACCOUNT,
    PREFIX_SERVER,
    PREFIX_USER,
    ClientInfo,
    JwtError,
    NkeyError,
    NkeyPair,
    claims_id,
    decode_jwt,
    decode_public_key,
    encode_authorization_response,
    encode_jwt,
    encode_user_jwt,
    parse_authorization_request,
)

# the key pairs of nats-server's own auth callout tests (public test vectors)
ISSUER_SEED = "SAANDLKMXL6CUS3CP52WIXBEDN6YJ545GDKC65U5JZPPV6WH6ESWUA6YAI"
ISSUER_PUB = "ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA"
USER_SEED = "SUAP277QP7U4JMFFPVZHLJYEQJ2UHOTYVEIZJYAWRJXQLP4FRSEHYZJJOU"
USER_PUB = "UBO2MQV67TQTVIRV3XFTEZOACM4WLOCMCDMAWN5QVN5PI2N6JHTVDRON"


def b64json(part: str) -> object:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


# ------------------------------------------------------------------ nkeys


def test_known_seeds_give_known_public_keys() -> None:
    assert NkeyPair.from_seed(ISSUER_SEED).public_key == ISSUER_PUB
    assert NkeyPair.from_seed(USER_SEED).public_key == USER_PUB


@pytest.mark.parametrize("prefix, letter", [(PREFIX_ACCOUNT, "A"), (PREFIX_USER, "U"), (PREFIX_SERVER, "N")])
def test_generated_keys_agree_with_the_nkeys_package(prefix: int, letter: str) -> None:
    pair = NkeyPair.generate(prefix)
    assert pair.seed.startswith("S" + letter) and pair.public_key.startswith(letter)
    theirs = nkeys.from_seed(pair.seed.encode())
    assert theirs.public_key.decode() == pair.public_key
    assert theirs.sign(b"data") == pair.sign(b"data")
    assert pair.seed not in repr(pair)


def test_bad_keys_are_rejected() -> None:
    with pytest.raises(NkeyError):
        decode_public_key(ISSUER_PUB[:-1] + ("A" if ISSUER_PUB[-1] != "A" else "B"))  # checksum
    with pytest.raises(NkeyError):
        decode_public_key(ISSUER_PUB, PREFIX_USER)  # role
    with pytest.raises(NkeyError):
        decode_public_key("not base32!")
    with pytest.raises(NkeyError):
        NkeyPair.from_seed(ISSUER_PUB)  # a public key is no seed
    assert len(decode_public_key(USER_PUB, PREFIX_USER)) == 32


# ------------------------------------------------------------------ JWTs


def test_jwt_round_trip_and_format() -> None:
    issuer = NkeyPair.from_seed(ISSUER_SEED)
    token = encode_jwt(
        {"sub": USER_PUB, "aud": "ECHO", "nats": {"type": "user", "version": 2}}, issuer, now=1000
    )
    head, payload, sig = token.split(".")
    assert "=" not in token
    assert b64json(head) == {"typ": "JWT", "alg": "ed25519-nkey"}
    claims = decode_jwt(token, issuer_prefix=PREFIX_ACCOUNT)
    assert claims == b64json(payload)
    assert claims["iss"] == ISSUER_PUB and claims["iat"] == 1000
    assert claims["jti"] == claims_id(claims)
    assert nkeys.from_seed(ISSUER_SEED.encode()).verify(
        f"{head}.{payload}".encode(), base64.urlsafe_b64decode(sig + "==")
    )


def test_jwt_checks() -> None:
    issuer = NkeyPair.from_seed(ISSUER_SEED)
    token = encode_jwt({"sub": USER_PUB}, issuer)
    head, payload, sig = token.split(".")
    other = (
        base64.urlsafe_b64encode(json.dumps({"sub": "x", "iss": ISSUER_PUB}).encode()).decode().rstrip("=")
    )
    with pytest.raises(JwtError, match="signature"):
        decode_jwt(f"{head}.{other}.{sig}")
    with pytest.raises(JwtError, match="role"):
        decode_jwt(token, issuer_prefix=PREFIX_SERVER)
    wrong_alg = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"HS256"}').decode().rstrip("=")
    with pytest.raises(JwtError, match="algorithm"):
        decode_jwt(f"{wrong_alg}.{payload}.{sig}")
    for junk in ("", "a.b", "a.b.c", "!!.??.**"):
        with pytest.raises(JwtError):
            decode_jwt(junk)


def server_request(server: NkeyPair, user: str = USER_PUB, **changes: object) -> str:
    nats: dict[str, object] = {
        "server_id": {"id": server.public_key, "name": "s1", "host": "0.0.0.0"},
        "user_nkey": user,
        "client_info": {"host": "10.1.2.3", "id": 7, "kind": "Client"},
        "connect_opts": {"user": "dev-1", "pass": "s3cret", "name": "agent", "protocol": 1},
        "client_tls": {"version": "1.3", "cipher": "TLS_AES_128_GCM_SHA256"},
        "type": "authorization_request",
        "version": 2,
    }
    nats.update(changes)
    return encode_jwt({"aud": "nats-authorization-request", "sub": ISSUER_PUB, "nats": nats}, server)


def test_authorization_request_is_parsed_and_checked() -> None:
    server = NkeyPair.generate(PREFIX_SERVER)
    req = parse_authorization_request(server_request(server).encode())
    assert (req.username, req.password, req.user_nkey) == ("dev-1", "s3cret", USER_PUB)
    assert req.server_id == server.public_key and req.issuer == ISSUER_PUB
    assert "s3cret" not in repr(req)
    info = ClientInfo.of(req)
    assert (info.host, info.name, info.server_name, info.tls_version) == ("10.1.2.3", "agent", "s1", "1.3")
    with pytest.raises(JwtError, match="not an authorization request"):
        parse_authorization_request(server_request(server, type="user"))
    with pytest.raises(JwtError, match="user_nkey"):
        parse_authorization_request(server_request(server, user=ISSUER_PUB))
    with pytest.raises(JwtError, match="server it names"):
        parse_authorization_request(
            server_request(server, server_id={"id": NkeyPair.generate(PREFIX_SERVER).public_key})
        )
    with pytest.raises(JwtError, match="role"):  # signed by an account key, not a server
        parse_authorization_request(server_request(NkeyPair.from_seed(ISSUER_SEED)))
    with pytest.raises(JwtError):
        parse_authorization_request(b"\xff\xfe")


def test_authorization_response_and_user_jwt() -> None:
    issuer = NkeyPair.from_seed(ISSUER_SEED)
    server = NkeyPair.generate(PREFIX_SERVER)
    perms = NatsPermissions(pub_allow=("a.>",), sub_allow=("b.>",), responses=True)
    user = encode_user_jwt(
        issuer, user_nkey=USER_PUB, account="ECHO", name="dev-1", permissions=perms.jwt_claims(), expires=2e9
    )
    claims = decode_jwt(user, issuer_prefix=PREFIX_ACCOUNT)
    assert claims["sub"] == USER_PUB and claims["aud"] == "ECHO" and claims["name"] == "dev-1"
    assert claims["exp"] == 2_000_000_000
    assert claims["nats"]["type"] == "user" and claims["nats"]["version"] == 2
    assert claims["nats"]["pub"] == {"allow": ["a.>"]}
    assert claims["nats"]["sub"] == {"allow": ["b.>"], "deny": ["$SYS.>"]}
    assert claims["nats"]["resp"] == {"max": 1, "ttl": 0}
    assert claims["nats"]["subs"] == claims["nats"]["data"] == claims["nats"]["payload"] == -1

    ok = decode_jwt(
        encode_authorization_response(issuer, user_nkey=USER_PUB, server_id=server.public_key, user_jwt=user)
    )
    assert ok["sub"] == USER_PUB and ok["aud"] == server.public_key
    assert ok["nats"] == {"jwt": user, "type": "authorization_response", "version": 2}
    no = decode_jwt(
        encode_authorization_response(issuer, user_nkey=USER_PUB, server_id=server.public_key, error="no")
    )
    assert no["nats"]["error"] == "no" and "jwt" not in no["nats"]
    with pytest.raises(ValueError):
        encode_authorization_response(issuer, user_nkey=USER_PUB, server_id=server.public_key)


# ------------------------------------------------------------------ permissions


def test_nothing_allowed_means_deny_all() -> None:
    claims = NatsPermissions().jwt_claims()
    assert claims == {"pub": {"deny": [">"]}, "sub": {"deny": ["$SYS.>", ">"]}}
    assert "resp" not in claims


def test_union_and_validation() -> None:
    a = request_permissions(["x.>"], inbox="_INBOX_d")
    b = request_permissions(["x.>", "y"], inbox="_INBOX_d") | responder_permissions(["svc"])
    u = NatsPermissions.union(a, b)
    assert u.pub_allow == ("x.>", "y") and u.sub_allow == ("_INBOX_d.>", "svc") and u.responses
    for bad in ("", "a b", "a\tb"):
        with pytest.raises(ValueError):
            NatsPermissions(pub_allow=(bad,))
    NatsPermissions(sub_allow=("jobs workers",))  # a queue group restriction is fine for subscribe
    with pytest.raises(ValueError):
        NatsPermissions(sub_allow=("a b c",))


def test_only_the_callout_user_may_subscribe_to_sys() -> None:
    assert "deny" not in callout_permissions().jwt_claims()["sub"]
    assert request_permissions([">"]).jwt_claims()["sub"]["deny"] == ["$SYS.>"]
    assert NatsPermissions(sub_allow=(">",), sub_deny=("a",)).jwt_claims()["sub"]["deny"] == ["a", "$SYS.>"]


def test_config_block() -> None:
    text = NatsPermissions(pub_allow=("a",), sub_allow=("b",), responses=True).config_block()
    assert text == (
        '{publish: {"allow": ["a"]}, subscribe: {"allow": ["b"], "deny": ["$SYS.>"]}, allow_responses: true}'
    )


def test_jetstream_subjects() -> None:
    c = js_consumer_permissions("S", "c1", "ns.df.f.a.b", delete=True, inbox="_I")
    assert set(c.pub_allow) == {
        "$JS.API.CONSUMER.INFO.S.c1",
        "$JS.API.CONSUMER.MSG.NEXT.S.c1",
        "$JS.API.CONSUMER.CREATE.S.c1.ns.df.f.a.b",
        "$JS.API.CONSUMER.DELETE.S.c1",
        "$JS.ACK.S.c1.>",
    }
    assert c.sub_allow == ("_I.>",)
    assert "$JS.API.CONSUMER.CREATE.S.c1" in js_consumer_permissions("S", "c1", ">").pub_allow
    assert "$JS.API.CONSUMER.CREATE.S.c1" not in js_consumer_permissions("S", "c1", create=False).pub_allow
    assert js_stream_permissions("S", create=True).pub_allow == (
        "$JS.API.STREAM.INFO.S",
        "$JS.API.STREAM.CREATE.S",
        "$JS.API.STREAM.UPDATE.S",
    )
    kv = kv_permissions("B", ["k.1"], read=True, write=True, watch=True)
    assert set(kv.pub_allow) == {
        "$JS.API.STREAM.INFO.KV_B",
        "$JS.API.DIRECT.GET.KV_B.$KV.B.k.1",
        "$KV.B.k.1",
        "$JS.API.CONSUMER.CREATE.KV_B",
        "$JS.API.CONSUMER.INFO.KV_B.*",
        "$JS.FC.KV_B.>",
    }
    assert "$JS.API.STREAM.MSG.GET.KV_B" in kv_permissions("B", ["k"], read=True, direct=False).pub_allow
    assert kv_permissions("B").pub_allow == ("$JS.API.STREAM.INFO.KV_B",)
    ro = object_store_permissions("O", read=True)
    rw = object_store_permissions("O", read=True, write=True)
    assert "$JS.API.STREAM.NAMES" in ro.pub_allow and "$JS.API.CONSUMER.CREATE.OBJ_O" in ro.pub_allow
    assert not any(s.startswith("$O.") for s in ro.pub_allow)
    assert {"$O.O.C.>", "$O.O.M.>", "$JS.API.STREAM.PURGE.OBJ_O"} <= set(rw.pub_allow)


# ------------------------------------------------------------------ server config


def test_hash_password() -> None:
    h = hash_password("pw", rounds=4)
    assert h.startswith("$2b$04$") and bcrypt.checkpw(b"pw", h.encode())


def test_render_auth_config() -> None:
    h = hash_password("pw", rounds=4)
    users = [
        StaticUser("callout", h, callout_permissions()),
        StaticUser("master", h, request_permissions(["*.scheduler.>"])),
    ]
    text = render_auth_config(users, CalloutConfig(ISSUER_PUB, "callout", timeout=1.5))
    assert "system_account: SYS" in text and "  SYS: {}" in text
    assert "jetstream: enabled" in text
    assert (
        f'{{user: "master", password: "{h}", permissions: {{publish: {{"allow": ["*.scheduler.>"]}}' in text
    )
    assert "timeout: 1.5" in text and f'issuer: "{ISSUER_PUB}"' in text
    assert "account: ECHO" in text and 'auth_users: ["callout", "master"]' in text
    assert "auth_callout" not in render_auth_config(users, None)
    assert "jetstream" not in render_auth_config(users, None, jetstream=False)


def test_render_auth_config_refuses_mistakes() -> None:
    h = hash_password("pw", rounds=4)
    with pytest.raises(ValueError, match="unique"):
        render_auth_config([StaticUser("a", h, NatsPermissions()), StaticUser("a", h, NatsPermissions())])
    with pytest.raises(ValueError, match="callout user"):
        render_auth_config([StaticUser("a", h, NatsPermissions())], CalloutConfig(ISSUER_PUB, "callout"))
    with pytest.raises(ValueError, match="account"):
        render_auth_config([], None, account="my account")
    with pytest.raises(ValueError, match="public account nkey"):
        CalloutConfig(USER_PUB, "callout")
    with pytest.raises(ValueError, match="bcrypt"):
        StaticUser("a", "plain-password", NatsPermissions())
    with pytest.raises(ValueError, match="user name"):
        StaticUser("a b", h, NatsPermissions())
    assert CALLOUT_SUBJECT == "$SYS.REQ.USER.AUTH"
