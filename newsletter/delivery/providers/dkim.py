"""DKIM signatures (dkimpy) over the final bytes of a message.

The signature covers every header a receiver judges a newsletter by, the
List-Unsubscribe pair included (Gmail and Yahoo require it for one-click).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Literal

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from newsletter.errors import ProviderConfigError

#: Signed header fields: the brief's required set plus the ones that shape the body.
DKIM_HEADERS = (
    "From", "To", "Subject", "Date", "Message-ID", "List-Unsubscribe",
    "List-Unsubscribe-Post", "List-Id", "Reply-To", "MIME-Version", "Content-Type",
)  # fmt: skip
DKIMAlgorithm = Literal["rsa-sha256", "ed25519-sha256"]
_KEY_ENV = "NEWSLETTER_DKIM_PRIVATE_KEY"


def _dkimpy_key(text: str, algorithm: DKIMAlgorithm) -> bytes:
    """The key in the form dkimpy wants: PKCS#1 PEM (RSA), base64 32-byte seed (ed25519).

    Accepts any unencrypted PEM private key (PKCS#1 or PKCS#8) and, for ed25519,
    also the base64 seed that ``dknewkey --ktype ed25519`` writes.
    """
    if "\\n" in text and "\n" not in text.strip():  # a PEM squeezed onto one env line
        text = text.replace("\\n", "\n")
    data = text.strip().encode()
    key = None
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ProviderConfigError(
                f"{_KEY_ENV} is not a readable, unencrypted PEM private key"
            ) from None
    if algorithm == "rsa-sha256":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ProviderConfigError(
                f"{_KEY_ENV} must be an RSA private key in PEM for rsa-sha256"
            )
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    if key is not None:
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ProviderConfigError(f"{_KEY_ENV} must be an Ed25519 key for ed25519-sha256")
        seed = key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    else:
        try:
            seed = base64.b64decode(data, validate=True)
        except ValueError:
            seed = b""
        if len(seed) != 32:
            raise ProviderConfigError(
                f"{_KEY_ENV} must be an Ed25519 PEM key or a base64 32-byte seed for ed25519-sha256"
            )
    try:
        import nacl.signing  # noqa: F401  (dkimpy signs ed25519 with PyNaCl)
    except ImportError:
        raise ProviderConfigError(
            "ed25519-sha256 DKIM signing needs PyNaCl (pip install 'dkimpy[ed25519]')"
        ) from None
    return base64.b64encode(seed)


@dataclass(frozen=True)
class DKIMSigner:
    """Signs final message bytes with dkimpy (relaxed/simple canonicalisation)."""

    selector: str
    domain: str
    algorithm: DKIMAlgorithm
    key: bytes = field(repr=False)

    @classmethod
    def load(
        cls, *, selector: str, domain: str, private_key: str, algorithm: DKIMAlgorithm
    ) -> DKIMSigner:
        """Check and convert the key once; raises ProviderConfigError (never shows the key)."""
        signer = cls(selector, domain, algorithm, _dkimpy_key(private_key, algorithm))
        try:
            signer.sign(b"From: check@" + domain.encode() + b"\r\n\r\ncheck\r\n")
        except dkim.DKIMException as exc:
            raise ProviderConfigError(f"DKIM signing with {_KEY_ENV} failed: {exc}") from None
        return signer

    def sign(self, message: bytes) -> bytes:
        """The ``DKIM-Signature:`` header (CRLF-terminated) to put before ``message``."""
        signature: bytes = dkim.sign(
            message,
            self.selector.encode(),
            self.domain.encode(),
            self.key,
            signature_algorithm=self.algorithm.encode(),
            include_headers=[h.encode() for h in DKIM_HEADERS],
            canonicalize=(b"relaxed", b"simple"),
        )
        return signature
