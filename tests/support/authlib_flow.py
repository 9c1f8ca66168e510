"""A relying party written by someone else (Authlib) against Tessera as an OpenID Provider.

Discovery, authorization code + PKCE through a real upstream sign-in for a resource (RFC 8707),
id token validation by the library (signature from the JWKS, iss, aud, exp, nonce), userinfo,
token exchange (RFC 8693) by a second client, the resource's server, authenticating with the
library's own private_key_jwt, refresh with rotation (asking again for the offline_access the
app is not registered for, as the library does), introspection and revocation, the app
authenticating with client_secret_post. Exits non-zero, saying why, at the first surprise.

Environment: TESSERA_ISSUER, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, RESOURCE (the resource the
app asks a token for), EXCHANGE_CLIENT_ID, EXCHANGE_CLIENT_KEY (the resource's server, which
exchanges it, and its P-256 private key in PEM), EXCHANGE_RESOURCE (the resource it exchanges
it for).
"""

import json
import os
import sys
from urllib.parse import urljoin

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session
from authlib.jose import JsonWebKey, jwt
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from authlib.oidc.core import CodeIDToken
from joserfc.jwk import ECKey

issuer = os.environ["TESSERA_ISSUER"].rstrip("/")
client_id = os.environ["CLIENT_ID"]
client_secret = os.environ["CLIENT_SECRET"]
redirect_uri = os.environ["REDIRECT_URI"]
resource = os.environ["RESOURCE"]

browser = requests.Session()
browser.trust_env = False


def browse(url):
    """Follows redirects by hand, keeping cookies, until one leaves for the redirect URI."""
    for _ in range(20):
        if url.startswith(redirect_uri):
            return url
        response = browser.get(url, allow_redirects=False, headers={"accept": "text/html"})
        location = response.headers.get("location")
        if not location:
            sys.exit(f"{url} answered {response.status_code} without a redirect: {response.text}")
        url = urljoin(url, location)
    sys.exit("too many redirects")


meta = requests.get(f"{issuer}/.well-known/openid-configuration").json()
assert meta["issuer"] == issuer, meta["issuer"]
jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"]).json())

session = OAuth2Session(
    client_id,
    client_secret,
    scope="openid email profile offline_access",
    redirect_uri=redirect_uri,
    code_challenge_method="S256",
    token_endpoint_auth_method="client_secret_post",
)
session.trust_env = False
verifier = generate_token(64)
nonce = generate_token(20)
url, state = session.create_authorization_url(
    meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce, resource=resource
)
back = browse(url)
token = session.fetch_token(
    meta["token_endpoint"], authorization_response=back, code_verifier=verifier, state=state, resource=resource
)

claims = jwt.decode(
    token["id_token"],
    jwks,
    claims_cls=CodeIDToken,
    claims_options={"iss": {"essential": True, "value": issuer}},
    claims_params={"nonce": nonce, "client_id": client_id},
)
claims.validate()
assert claims["email"] == "authlib-user@example.com", claims
sub = claims["sub"]

info = session.get(meta["userinfo_endpoint"]).json()
assert info["sub"] == sub and info["email"] == "authlib-user@example.com", info

# The resource's server exchanges the user's token for one for the API it calls on their behalf.
exchange = "urn:ietf:params:oauth:grant-type:token-exchange"
assert exchange in meta["grant_types_supported"], meta["grant_types_supported"]
access_type = "urn:ietf:params:oauth:token-type:access_token"
server = OAuth2Session(
    os.environ["EXCHANGE_CLIENT_ID"],
    ECKey.import_key(os.environ["EXCHANGE_CLIENT_KEY"]),
    token_endpoint_auth_method="private_key_jwt",
)
server.register_client_auth_method(PrivateKeyJWT(meta["token_endpoint"], alg="ES256"))
server.trust_env = False
exchanged = server.fetch_token(
    meta["token_endpoint"],
    grant_type=exchange,
    subject_token=token["access_token"],
    subject_token_type=access_type,
    resource=os.environ["EXCHANGE_RESOURCE"],
)
assert exchanged["issued_token_type"] == access_type, exchanged
assert "refresh_token" not in exchanged, exchanged
acting = jwt.decode(exchanged["access_token"], jwks)
acting.validate()
assert acting["sub"] == sub and acting["aud"] == os.environ["EXCHANGE_RESOURCE"], acting
assert acting["act"] == {"sub": os.environ["EXCHANGE_CLIENT_ID"], "act": {"sub": client_id}}, acting

# Not registered for it, the app was granted its other scopes, as it is again at the refresh,
# where the library asks for offline_access once more.
assert token["scope"] == "openid email profile", token["scope"]
old_refresh = token["refresh_token"]
new = session.refresh_token(meta["token_endpoint"], refresh_token=old_refresh)
assert new["refresh_token"] != old_refresh
assert new["scope"] == "openid email profile", new["scope"]

introspected = session.introspect_token(meta["introspection_endpoint"], token=new["access_token"]).json()
assert introspected["active"] is True and introspected["sub"] == sub, introspected

revoked = session.revoke_token(meta["revocation_endpoint"], token=new["refresh_token"])
assert revoked.status_code == 200, revoked.text
introspected = session.introspect_token(meta["introspection_endpoint"], token=new["access_token"]).json()
assert introspected == {"active": False}, introspected

# The exchanged token ended with the grant it came from.
introspected = server.introspect_token(meta["introspection_endpoint"], token=exchanged["access_token"]).json()
assert introspected == {"active": False}, introspected

print(json.dumps({"ok": True, "sub": sub}))
