#!/usr/bin/env python3
"""One-time setup of the compose profile's Garage, through its admin API (v2), idempotent:
a single-node layout, the bucket VMPIPE_S3_BUCKET, the key VMPIPE_S3_ACCESS_KEY_ID with its
secret VMPIPE_S3_SECRET_ACCESS_KEY imported, and that key allowed to read and write the bucket.
Run again, it changes nothing. Environment: GARAGE_ADMIN_URL (http://garage:3903),
GARAGE_ADMIN_TOKEN, GARAGE_CAPACITY (the node's capacity, 10G by default).
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request



def required(name):
    value = os.environ.get(name)
    if not value:
        sys.exit(f"garage-setup: {name} is not set (in .env, see docker-compose.yml)")
    return value


ADMIN = os.environ.get("GARAGE_ADMIN_URL", "http://garage:3903").rstrip("/")
TOKEN = required("GARAGE_ADMIN_TOKEN")
BUCKET = os.environ.get("VMPIPE_S3_BUCKET") or "voicemails"
KEY_ID = required("VMPIPE_S3_ACCESS_KEY_ID")
SECRET = required("VMPIPE_S3_SECRET_ACCESS_KEY")
UNITS = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


def call(method, path, body=None, missing_ok=False):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        ADMIN + path,
        data=data,
        method=method,
        headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
            return json.loads(text) if text else {}
    except urllib.error.HTTPError as e:
        if missing_ok and e.code in (400, 404):
            return None
        sys.exit(f"garage-setup: {method} {path}: {e.code} {e.read().decode(errors='replace')}")


def capacity():
    text = os.environ.get("GARAGE_CAPACITY") or "10G"
    unit = text[-1].upper()
    return int(text[:-1]) * UNITS[unit] if unit in UNITS else int(text)


def main():
    for _ in range(60):
        try:
            status = call("GET", "/v2/GetClusterStatus")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(1)
    else:
        sys.exit(f"garage-setup: no answer from {ADMIN}")
    node = status["nodes"][0]["id"]
    layout = call("GET", "/v2/GetClusterLayout")
    if not any(role["id"] == node for role in layout["roles"]):
        role = {"id": node, "zone": "dc1", "capacity": capacity(), "tags": []}
        call("POST", "/v2/UpdateClusterLayout", {"roles": [role]})
        call("POST", "/v2/ApplyClusterLayout", {"version": layout["version"] + 1})
        print(f"garage-setup: layout applied (node {node[:16]})")
    bucket = call("GET", f"/v2/GetBucketInfo?globalAlias={BUCKET}", missing_ok=True)
    if bucket is None:
        bucket = call("POST", "/v2/CreateBucket", {"globalAlias": BUCKET})
        print(f"garage-setup: bucket {BUCKET} created")
    if call("GET", f"/v2/GetKeyInfo?id={KEY_ID}", missing_ok=True) is None:
        call("POST", "/v2/ImportKey",
             {"accessKeyId": KEY_ID, "secretAccessKey": SECRET, "name": "vmpipe"})
        print(f"garage-setup: key {KEY_ID} imported")
    call("POST", "/v2/AllowBucketKey", {
        "bucketId": bucket["id"],
        "accessKeyId": KEY_ID,
        "permissions": {"read": True, "write": True, "owner": True},
    })
    print(f"garage-setup: {KEY_ID} may read and write {BUCKET}")


if __name__ == "__main__":
    main()
