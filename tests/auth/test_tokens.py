"""Identity-provider tokens: RS256 and ES256 keys and a JWKS this test makes (a file, and a URL served here),
every refusal as a 401 saying which, key rotation, claims mapped to project and role (Entra's `tid`, `roles`,
`groups`), and `AzureOpenAI(azure_ad_token_provider=...)` against a live `stillroom serve`.

Chat goes to the named fake upstream (tests/admin.py): these tests check who may call, not what the model says.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from starlette.testclient import TestClient

from stillroom.store.completions import count_rows
from tests.admin import ADMIN, CHAT, SERVER_KEY, bearer, fake_upstream, make_client
from tests.conftest import AZURE_API_VERSION
from tests.envelope import assert_openai_error
from tests.live import FakeUpstream, fake_models_config, start_server

__all__ = ["fake_upstream"]

ISSUER = "https://login.microsoftonline.com/tenant-under-test/v2.0"
AUDIENCE = "https://cognitiveservices.azure.com"
READER_ROLE = "Stillroom.Reader"  # an Entra app role
CONTRIBUTORS_GROUP = "6f1c2a6e-0000-4000-8000-000000000001"  # an Entra group object id


@dataclass
class Signer:
    """A private key of the identity provider, and its public JWK."""

    alg: str
    kid: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    private: Any = None

    def __post_init__(self) -> None:
        if self.private is None:
            if self.alg == "RS256":
                self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            else:
                self.private = ec.generate_private_key(ec.SECP256R1())

    def jwk(self) -> dict[str, Any]:
        algorithm = RSAAlgorithm if self.alg == "RS256" else ECAlgorithm
        public: dict[str, Any] = algorithm.to_jwk(self.private.public_key(), as_dict=True)
        return public | {"kid": self.kid, "use": "sig", "alg": self.alg}

    def token(self, *, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        now = int(time.time())
        payload = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + 600, "sub": "user-1"}
        payload |= claims
        payload = {k: v for k, v in payload.items() if v is not None}
        return jwt.encode(payload, self.private, algorithm=self.alg, headers={"kid": self.kid} | (headers or {}))


def jwks(*signers: Signer) -> dict[str, Any]:
    return {"keys": [s.jwk() for s in signers]}


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


class JwksServer:
    """A tiny identity provider's JWKS endpoint: serves `document`, counts fetches."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/discovery/v2.0/keys"
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


@pytest.fixture(scope="module")
def rsa_signer() -> Signer:
    return Signer("RS256")


@pytest.fixture(scope="module")
def ec_signer() -> Signer:
    return Signer("ES256")


@pytest.fixture(scope="module")
def idp(rsa_signer: Signer, ec_signer: Signer) -> Iterator[JwksServer]:
    server = JwksServer(jwks(rsa_signer, ec_signer))
    yield server
    server.close()


def _oidc(tenant: str, project_id: str, **jwks_source: Any) -> dict[str, Any]:
    return {
        "oidc_issuers": [ISSUER, "https://sts.windows.net/tenant-under-test/"],
        "oidc_audience": AUDIENCE,
        "oidc_project_map": {tenant: project_id},
        "oidc_role_map": {READER_ROLE: "reader", CONTRIBUTORS_GROUP: "contributor", "Stillroom.Admin": "admin"},
        **jwks_source,
    }


@dataclass
class Tenant:
    client: TestClient
    tid: str  # the Entra tenant id, mapped to `project_id`
    project_id: str


@pytest.fixture(scope="module")
def tenant(
    db_url: str, fake_upstream: FakeUpstream, idp: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Tenant]:
    """An app that accepts tokens whose JWKS is the URL above; the tenant's project made with the server key."""
    tid = str(uuid.uuid4())
    project_id = f"p-{uuid.uuid4().hex[:12]}"
    tmp = tmp_path_factory.mktemp("tokens")
    with make_client(tmp, fake_upstream, db_url, **_oidc(tid, project_id, oidc_jwks_url=idp.url)) as client:
        made = client.post("/v1/organization/projects", json={"id": project_id, "name": "tenant"}, headers=ADMIN)
        assert made.status_code == 200, made.text
        yield Tenant(client, tid, project_id)


def _stored_ids(tenant: Tenant) -> list[str]:
    headers = ADMIN | {"openai-project": tenant.project_id}
    response = tenant.client.get("/v1/chat/completions", headers=headers, params={"limit": 100})
    return [c["id"] for c in response.json()["data"]]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_token_maps_tid_to_the_project_and_groups_to_contributor(
    tenant: Tenant, rsa_signer: Signer, ec_signer: Signer, alg: str
) -> None:
    signer = rsa_signer if alg == "RS256" else ec_signer
    token = signer.token(tid=tenant.tid, groups=["unrelated-group", CONTRIBUTORS_GROUP])
    made = tenant.client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=bearer(token))
    assert made.status_code == 200 and made.headers["x-stillroom-stored"] == "true", made.text
    assert made.json()["id"] in _stored_ids(tenant)  # stored in the tenant's project
    listed = tenant.client.get("/v1/chat/completions", headers=bearer(token), params={"limit": 100})
    assert made.json()["id"] in [c["id"] for c in listed.json()["data"]]
    admin_only = tenant.client.get(f"/v1/organization/projects/{tenant.project_id}/api_keys", headers=bearer(token))
    assert assert_openai_error(admin_only, 403, "invalid_request_error")["code"] == "permission_denied"


def test_an_app_role_maps_to_reader_and_no_known_role_grants_nothing(tenant: Tenant, rsa_signer: Signer) -> None:
    before = count_rows(tenant.client.app.state.services.engine)  # type: ignore[attr-defined]
    reader = bearer(rsa_signer.token(tid=tenant.tid, roles=[READER_ROLE]))
    assert tenant.client.get("/v1/chat/completions", headers=reader).status_code == 200
    refused = tenant.client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=reader)
    assert "inference" in assert_openai_error(refused, 403, "invalid_request_error")["message"]
    nobody = bearer(rsa_signer.token(tid=tenant.tid, roles=["Some.Other.Role"]))
    assert_openai_error(tenant.client.get("/v1/chat/completions", headers=nobody), 403, "invalid_request_error")
    assert count_rows(tenant.client.app.state.services.engine) == before  # type: ignore[attr-defined]


def test_a_token_of_an_unmapped_tenant_or_with_another_projects_header_is_401(
    tenant: Tenant, rsa_signer: Signer
) -> None:
    stranger = bearer(rsa_signer.token(tid=str(uuid.uuid4()), roles=[READER_ROLE]))
    error = assert_openai_error(
        tenant.client.get("/v1/chat/completions", headers=stranger), 401, "invalid_request_error"
    )
    assert "does not exist" in error["message"]
    missing = bearer(rsa_signer.token(roles=[READER_ROLE]))  # no tid at all
    error = assert_openai_error(
        tenant.client.get("/v1/chat/completions", headers=missing), 401, "invalid_request_error"
    )
    assert "'tid'" in error["message"]
    own = bearer(rsa_signer.token(tid=tenant.tid, roles=[READER_ROLE])) | {"openai-project": "default"}
    error = assert_openai_error(tenant.client.get("/v1/chat/completions", headers=own), 401, "invalid_request_error")
    assert error["code"] == "mismatched_project"


def _refusals(tenant: str, good: Signer) -> dict[str, tuple[str, str]]:
    """name -> (token, what the 401's message must say)."""
    now = int(time.time())
    ok = {"tid": tenant, "roles": [READER_ROLE]}
    impostor = Signer(good.alg, kid=good.kid)  # same kid, another private key
    none_header = {"alg": "none", "typ": "JWT", "kid": good.kid}
    none_claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, **ok}
    hs_header = {"alg": "HS256", "typ": "JWT", "kid": good.kid}
    return {
        "expired": (good.token(exp=now - 120, iat=now - 720, nbf=now - 720, **ok), "expired"),
        "not_yet_valid": (good.token(nbf=now + 300, **ok), "not yet valid"),
        "issued_in_the_future": (good.token(iat=now + 300, nbf=None, **ok), "not yet valid"),
        "wrong_issuer": (good.token(iss="https://evil.example/v2.0", **ok), "wrong issuer"),
        "wrong_audience": (good.token(aud="api://someone-else", **ok), "wrong audience"),
        "bad_signature": (impostor.token(**ok), "bad signature"),
        "tampered_claims": (_tampered(good.token(**ok)), "bad signature"),
        "unknown_kid": (Signer(good.alg).token(**ok), "unknown signing key"),
        "alg_none": (f"{_b64(none_header)}.{_b64(none_claims)}.", "algorithm 'none' is not accepted"),
        "alg_hs256": (_hmac_signed(hs_header, none_claims, json.dumps(good.jwk())), "'HS256' is not accepted"),
        "no_exp": (good.token(exp=None, **ok), "'exp' claim is missing"),
        "garbage": ("eyJhbGciOi.not-base64!.x", "Invalid token"),
        "kid_not_a_string": (_resigned(good, {"alg": good.alg, "kid": 7}, ok), "Key ID header parameter"),
        "unknown_crit": (_resigned(good, {"alg": good.alg, "kid": good.kid, "crit": ["x"], "x": 1}, ok), "critical"),
        "exp_not_a_number": (good.token(exp="soon", **ok), "(exp) must be an integer"),
    }


def _hmac_signed(header: dict[str, Any], claims: dict[str, Any], secret: str) -> str:
    """Signed with the public key as an HMAC secret: the classic algorithm confusion attack."""
    signing_input = f"{_b64(header)}.{_b64(claims)}"
    mac = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


def _resigned(signer: Signer, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signed by the right key under a header PyJWT would refuse to write."""
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, **claims}
    signing_input = f"{_b64(header)}.{_b64(payload)}".encode()
    algorithm = jwt.get_algorithm_by_name(signer.alg)
    signature = algorithm.sign(signing_input, signer.private)
    return f"{signing_input.decode()}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


def _tampered(token: str) -> str:
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["Stillroom.Admin"]
    return f"{header}.{_b64(claims)}.{signature}"


REFUSALS = [
    "expired",
    "not_yet_valid",
    "issued_in_the_future",
    "wrong_issuer",
    "wrong_audience",
    "bad_signature",
    "tampered_claims",
    "unknown_kid",
    "alg_none",
    "alg_hs256",
    "no_exp",
    "garbage",
    "kid_not_a_string",
    "unknown_crit",
    "exp_not_a_number",
]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("case", REFUSALS)
def test_every_bad_token_is_401_saying_which(
    tenant: Tenant, rsa_signer: Signer, ec_signer: Signer, alg: str, case: str
) -> None:
    token, says = _refusals(tenant.tid, rsa_signer if alg == "RS256" else ec_signer)[case]
    engine = tenant.client.app.state.services.engine  # type: ignore[attr-defined]
    before = count_rows(engine)
    for headers in (bearer(token), {"api-key": token}):
        response = tenant.client.post("/v1/chat/completions", json=CHAT | {"store": True}, headers=headers)
        error = assert_openai_error(response, 401, "invalid_request_error")
        assert says in error["message"] and not error["message"].endswith(".."), (case, error["message"])
        assert token not in error["message"]
    assert count_rows(engine) == before


def test_an_unknown_kid_fetches_the_jwks_again_so_a_rotated_key_works(
    tenant: Tenant, idp: JwksServer, rsa_signer: Signer, ec_signer: Signer
) -> None:
    old = bearer(rsa_signer.token(tid=tenant.tid, roles=[READER_ROLE]))
    assert tenant.client.get("/v1/chat/completions", headers=old).status_code == 200
    rotated = Signer("RS256")
    fetched = idp.fetches
    idp.document = jwks(rotated, rsa_signer, ec_signer)  # the provider publishes a new key and signs with it
    try:
        new = bearer(rotated.token(tid=tenant.tid, roles=[READER_ROLE]))
        deadline = time.monotonic() + 3  # unknown kids fetch at most once a second (auth/tokens.py)
        while (response := tenant.client.get("/v1/chat/completions", headers=new)).status_code != 200:
            assert "unknown signing key" in response.json()["error"]["message"]
            assert time.monotonic() < deadline, "the rotated key was never fetched"
            time.sleep(0.05)
        assert idp.fetches > fetched
        assert tenant.client.get("/v1/chat/completions", headers=old).status_code == 200
    finally:
        idp.document = jwks(rsa_signer, ec_signer, rotated)


def test_a_jwks_file_is_read_and_its_keys_verify(
    db_url: str, fake_upstream: FakeUpstream, tmp_path: Path, ec_signer: Signer, rsa_signer: Signer
) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(ec_signer)))
    tid, project_id = str(uuid.uuid4()), f"p-{uuid.uuid4().hex[:12]}"
    with make_client(tmp_path, fake_upstream, db_url, **_oidc(tid, project_id, oidc_jwks_file=path)) as client:
        made = client.post("/v1/organization/projects", json={"id": project_id, "name": "file"}, headers=ADMIN)
        assert made.status_code == 200, made.text
        reader = bearer(ec_signer.token(tid=tid, roles=[READER_ROLE]))
        assert client.get("/v1/chat/completions", headers=reader).status_code == 200
        other = bearer(rsa_signer.token(tid=tid, roles=[READER_ROLE]))  # not in the file
        error = assert_openai_error(client.get("/v1/chat/completions", headers=other), 401, "invalid_request_error")
        assert "unknown signing key" in error["message"]


def test_azure_openai_with_a_token_provider_works_unchanged_against_serve(
    db_url: str, fake_upstream: FakeUpstream, idp: JwksServer, rsa_signer: Signer, tmp_path: Path
) -> None:
    tid, project_id = str(uuid.uuid4()), f"p-{uuid.uuid4().hex[:12]}"
    env = {
        f"STILLROOM_{name.upper()}": value if isinstance(value, str) else json.dumps(value)
        for name, value in _oidc(tid, project_id, oidc_jwks_url=idp.url).items()
    }
    live = start_server(
        tmp_path,
        db_url,
        config=fake_models_config(fake_upstream.url, {"fake": ("fake", None)}),
        api_key=SERVER_KEY,
        env=env,
        name="oidc",
    )
    try:
        made = httpx.post(f"{live.url}/v1/organization/projects", json={"id": project_id, "name": "t"}, headers=ADMIN)
        assert made.status_code == 200, made.text
        calls = []

        def provider() -> str:  # what get_bearer_token_provider(DefaultAzureCredential(), ...) hands the SDK
            calls.append(1)
            return rsa_signer.token(tid=tid, groups=[CONTRIBUTORS_GROUP], aud=[AUDIENCE, "api://other"])

        with openai.AzureOpenAI(
            azure_endpoint=live.url, api_version=AZURE_API_VERSION, azure_ad_token_provider=provider, max_retries=0
        ) as sdk:
            completion = sdk.chat.completions.create(
                model="fake", messages=[{"role": "user", "content": "Hi"}], store=True
            )
            assert completion.choices[0].message.content
            assert [c.id for c in sdk.chat.completions.list()] == [completion.id]
            assert sdk.chat.completions.retrieve(completion.id).id == completion.id
        assert calls
        expired = rsa_signer.token(tid=tid, groups=[CONTRIBUTORS_GROUP], exp=int(time.time()) - 60)
        with (
            openai.AzureOpenAI(
                azure_endpoint=live.url,
                api_version=AZURE_API_VERSION,
                azure_ad_token_provider=lambda: expired,
                max_retries=0,
            ) as sdk,
            pytest.raises(openai.AuthenticationError, match="expired"),
        ):
            sdk.chat.completions.create(model="fake", messages=[{"role": "user", "content": "Hi"}])
    finally:
        live.stop()
