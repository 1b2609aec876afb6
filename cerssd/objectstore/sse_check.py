"""Does the store really do the server-side encryption ``[stores.NAME] sse`` asks for?

Only the store can say, and stores differ in how they say no. Measured on SeaweedFS
4.48 (tests/test_private_backups.py): without an SSE key configured it answers
``AES256`` with ``500 InternalError`` on PutObject and CreateMultipartUpload (which
cerssd's retry policy would take for an outage and retry for ever); it accepts
``aws:kms`` on CreateMultipartUpload *silently*, stores nothing encrypted, and fails
later parts with 500; it accepts an unknown value and ignores it. With
``WEED_S3_SSE_KEY`` set, ``AES256`` works (objects are encrypted at rest, ranged reads
decrypt); ``aws:kms`` needs a KMS it does not have.

So before a store's first upload (once per client), a small probe object is written
with the SSE arguments and the answer read back: an error where the same PUT without
them succeeds is the store refusing the setting, and an answer that does not name the
encryption asked for is the store ignoring it. Both are a permanent ``SseRefused``
naming the key, never retried. The probe is deleted at once.
"""

from __future__ import annotations

import contextlib

from .client import ObjectMissing, ObjectStore, StoreError

#: The probe's key, under the store's prefix; no backup's key looks like it.
PROBE = ".cerssd-sse-check"


class SseRefused(StoreError):
    def __init__(self, store: str, message: str) -> None:
        super().__init__(store, message, permanent=True, code="sse")


async def check_sse(store: ObjectStore) -> None:
    """Raise ``SseRefused`` unless the store encrypts as configured (a no-op without
    ``sse``, and after the first success on this client)."""
    privacy = store.config.privacy
    if privacy.sse is None or store.sse_checked:
        return
    key = store.key(PROBE)
    setting = f"stores.{store.name}.sse"
    asked = f"sse = {privacy.sse!r}" + (f" with sse_kms_key_id {privacy.sse_kms_key_id!r}"
                                        if privacy.sse_kms_key_id else "")
    try:
        answer = await store.call("put_object", Key=key, Body=b"cerssd", **privacy.sse_args())
    except StoreError as exc:
        # The same PUT without SSE: if it fails too, the store is away (or refuses us
        # altogether), and that error is the one to report and retry.
        await store.call("put_object", Key=key, Body=b"cerssd")
        await _remove(store, key)
        raise SseRefused(store.name, f"{setting}: the store refused {asked}: {exc}") \
            from exc
    await _remove(store, key)
    done = answer.get("ServerSideEncryption")
    if done != privacy.sse:
        raise SseRefused(store.name, f"{setting}: the store accepted {asked} but did not "
                         f"encrypt with it (it answered {done or 'no encryption'}); an "
                         "object it stored would not be encrypted at rest")
    store.sse_checked = True


async def _remove(store: ObjectStore, key: str) -> None:
    with contextlib.suppress(ObjectMissing):
        await store.delete(key)
