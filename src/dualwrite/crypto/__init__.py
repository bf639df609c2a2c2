"""Pure cryptography of dualwrite: versioned keys, the field cipher, blind indexes.

Nothing here touches the network or the database; the only I/O is reading an
``ENCRYPTION_KEYS_FILE`` when one is configured.

>>> from dualwrite.crypto import DataKey, FieldCipher, Keyring
>>> fc = FieldCipher(Keyring([DataKey("v1", bytes(32))]))
>>> ct = fc.encrypt("ada@example.com", table="clients", column="email", row_key="1")
>>> fc.decrypt(ct, table="clients", column="email", row_key="1")
'ada@example.com'
"""

from dualwrite.crypto.blind_index import BlindIndex
from dualwrite.crypto.cipher import (
    NONCE_BYTES,
    TAG_BYTES,
    FieldCipher,
    associated_data,
    key_version_of,
    row_key_of,
)
from dualwrite.crypto.keyring import DataKey, Keyring, is_version_label
from dualwrite.crypto.providers import (
    EnvKeyProvider,
    FileKeyProvider,
    KeyProvider,
    generate_key,
    load_blind_index_key,
    load_keyring,
)

__all__ = [
    "NONCE_BYTES",
    "TAG_BYTES",
    "BlindIndex",
    "DataKey",
    "EnvKeyProvider",
    "FieldCipher",
    "FileKeyProvider",
    "KeyProvider",
    "Keyring",
    "associated_data",
    "generate_key",
    "is_version_label",
    "key_version_of",
    "load_blind_index_key",
    "load_keyring",
    "row_key_of",
]
