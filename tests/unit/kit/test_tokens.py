import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from services.kit.auth import TokenVerifier, mint
from services.kit.settings import AuthSettings

SECRET = "s" * 48


def verifier(**kw) -> TokenVerifier:
    return TokenVerifier(AuthSettings(secret=SECRET, **kw))


def test_a_dev_token_carries_email_district_schools_and_roles():
    identity = verifier().verify(mint(SECRET, email="c@s.org", district_id="d1", schools=["02M001"],
                                      roles=["caseload_viewer"]))
    assert identity.email == "c@s.org" and identity.district_id == "d1"
    assert identity.schools_for() == {"02M001"} and identity.roles == {"caseload_viewer"}
    assert identity.may_see_school("02M001") and not identity.may_see_school("02M002")


def test_an_identity_only_token_names_the_person_and_district_and_holds_nothing():
    token = mint(SECRET, email="Rivera@D.example.org", district_id="d1")
    assert set(jwt.decode(token, options={"verify_signature": False})) >= {"sub", "email", "district_id"}
    assert not {"roles", "schools"} & set(jwt.decode(token, options={"verify_signature": False}))
    identity = verifier().verify(token)
    assert identity.district_id == "d1" and identity.roles == frozenset() and identity.schools_for() == frozenset()


def test_an_expired_token_is_refused():
    token = mint(SECRET, email="c@s.org", district_id="d1", schools=[], roles=[], ttl_seconds=-1)
    with pytest.raises(jwt.ExpiredSignatureError):
        verifier().verify(token)


def test_a_tampered_token_is_refused():
    token = mint(SECRET, email="c@s.org", district_id="d1", schools=[], roles=["caseload_viewer"])
    header, payload, signature = token.split(".")
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False}), "district_id": "d2"},
                        "another-secret-of-enough-length-000000", algorithm="HS256").split(".")[1]
    with pytest.raises(jwt.InvalidSignatureError):
        verifier().verify(".".join([header, forged, signature]))


def test_a_token_for_another_audience_is_refused():
    token = mint(SECRET, email="c@s.org", district_id="d1", schools=[], roles=[], audience="other-app")
    with pytest.raises(jwt.InvalidAudienceError):
        verifier().verify(token)


def test_unknown_roles_are_refused():
    token = mint(SECRET, email="c@s.org", district_id="d1", schools=[], roles=["superuser"])
    with pytest.raises(jwt.InvalidTokenError, match="unknown roles"):
        verifier().verify(token)


def test_production_verifies_against_a_public_key_and_refuses_the_shared_secret():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    claims = {"sub": "c@s.org", "district_id": "d1", "roles": ["district_admin"], "iss": "caseflow",
              "aud": "caseflow", "exp": int(time.time()) + 60}
    production = TokenVerifier(AuthSettings(public_key=public.decode()))
    assert production.verify(jwt.encode(claims, key, algorithm="RS256")).district_wide
    with pytest.raises(jwt.InvalidTokenError):
        production.verify(jwt.encode(claims, SECRET, algorithm="HS256"))


def test_a_service_without_any_key_refuses_to_start():
    with pytest.raises(RuntimeError, match="no token key"):
        TokenVerifier(AuthSettings())


def test_a_kept_token_is_refused_once_it_expires():
    """Tokens are verified once per process and kept; a kept one still expires on time."""
    v = verifier()
    token = mint(SECRET, email="c@s.org", district_id="d1", roles=["caseload_viewer"], ttl_seconds=1)
    assert v.verify(token).email == "c@s.org"
    assert v.verify(token).email == "c@s.org"  # kept
    time.sleep(1.05)
    with pytest.raises(jwt.ExpiredSignatureError):
        v.verify(token)


def test_a_token_altered_after_a_good_one_was_kept_is_refused():
    v = verifier()
    token = mint(SECRET, email="c@s.org", district_id="d1", roles=["caseload_viewer"])
    v.verify(token)
    header, payload, signature = token.split(".")
    forged = jwt.encode({**jwt.decode(token, options={"verify_signature": False}), "district_id": "d2"},
                        "another-secret-of-enough-length-000000", algorithm="HS256").split(".")[1]
    with pytest.raises(jwt.InvalidSignatureError):
        v.verify(".".join([header, forged, signature]))
    with pytest.raises(jwt.InvalidSignatureError):
        v.verify(token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
