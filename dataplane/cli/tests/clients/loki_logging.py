"""Logs through Python's logging with python-logging-loki (Loki push, JSON); prints what it
sent as JSON.

Usage: loki_logging.py URL
"""
import json
import logging
import sys

import logging_loki

url = sys.argv[1]
handler = logging_loki.LokiHandler(
    url=f"{url}/loki/api/v1/push",
    tags={"app": "loki-py", "env": "test"},
    version="1",
)
log = logging.getLogger("loki-py")
log.setLevel(logging.DEBUG)
log.propagate = False
log.addHandler(handler)
sent = []
for i in range(80):
    level = [logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL][i % 4]
    log.log(level, "shipment %d left the warehouse", i, extra={"tags": {"region": f"r{i % 3}"}})
    sent.append({"message": f"shipment {i} left the warehouse", "level": logging.getLevelName(level), "region": f"r{i % 3}"})
print(json.dumps({"sent": sent}))
