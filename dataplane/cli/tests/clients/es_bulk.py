"""Sends documents with elasticsearch-py's helpers.bulk; prints what it sent as JSON.

Usage: es_bulk.py URL TENANT
"""
import json
import sys

from elasticsearch import Elasticsearch, helpers

url, tenant = sys.argv[1], sys.argv[2]
es = Elasticsearch(url, headers={"X-Logcluster-Tenant": tenant}, request_timeout=30)
info = es.info()

docs = []
for i in range(500):
    doc = {
        "@timestamp": f"2026-11-23T10:{i // 60:02d}:{i % 60:02d}.{i:03d}Z",
        "message": f"order {i} processed",
        "log.level": ["info", "warn", "error"][i % 3],
        "host": {"name": f"web-{i % 4}"},
        "trace.id": f"trace-{i:04d}",
        "duration_ms": i * 3,
    }
    if i % 2 == 0:
        doc["service"] = {"name": "payments"}
    docs.append({"_index": "shop", "_source": doc})
ok, errors = helpers.bulk(es, docs, chunk_size=128)

# create actions with ids, sent twice: the second pass must be refused as conflicts
created = [
    {"_op_type": "create", "_index": "audit", "_id": f"a-{i}", "_source": {"message": f"audit {i}"}}
    for i in range(100)
]
first_ok, first_errors = helpers.bulk(es, created, chunk_size=100, raise_on_error=False)
second_ok, second_errors = helpers.bulk(es, created, chunk_size=100, raise_on_error=False)

print(json.dumps({
    "version": info["version"]["number"],
    "ok": ok,
    "errors": len(errors),
    "first_ok": first_ok,
    "first_errors": len(first_errors),
    "second_ok": second_ok,
    "second_statuses": sorted({list(e.values())[0]["status"] for e in second_errors}),
    "sent": [d["_source"] for d in docs],
}))
