"""The state service: versioned key/value state on JetStream KV, with watches and snapshots.

Read top-down:

    __main__.py        wiring: `python -m corral.state`
    service.py         the `<prefix>.state.<verb>` endpoints (thin)
    messages.py        request and reply Structs
    store.py           the state bucket (KV `<prefix>_state`): CAS writes, TTLs, reads, cuts
    snapshot_store.py  snapshots (object store + KV `<prefix>_snapshots`), resumable restores
    events.py          every change on `<prefix>.evt.state.changed`
    watch.py           ChangeStream: ordered changes with old values
    feed.py            a consumer that resumes from its last sequence (reconnects, restarts)
    consumer.py        one ephemeral pull consumer, checked for gaps; one-shot reads
    errors.py          JetStream failures as UNAVAILABLE
    keys.py  values.py  entries.py  changes.py  snapshots.py  settings.py
                       pure logic: no NATS
"""
