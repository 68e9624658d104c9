"""The few S3 calls an agent makes itself (read CURRENT, write its shutdown record, see whether a replica exists),
signed with SigV4.

Not boto3: importing boto3 costs ~30 MiB of RSS in every tenant container, for two small requests a minute.
Path-style addressing, so it works unchanged against AWS S3, R2, MinIO and SeaweedFS given an endpoint."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import urllib.parse
from dataclasses import dataclass, field


class S3Error(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"S3 answered {status}: {message}")
        self.status = status


def split_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"not an s3:// URL: {url!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@dataclass(frozen=True)
class S3Client:
    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = "us-east-1"
    timeout: float = 5.0

    def get(self, bucket: str, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""
        status, body = self._request("GET", bucket, key)
        if status == 404:
            return None
        if status != 200:
            raise S3Error(status, body[:200].decode(errors="replace"))
        return body

    def has_keys(self, bucket: str, prefix: str) -> bool:
        """Whether any object's key starts with `prefix` (one ListObjectsV2 request, `max-keys=1`)."""
        from xml.etree import ElementTree  # only the entrypoint lists, once

        query = {"list-type": "2", "max-keys": "1", "prefix": prefix}
        status, body = self._request("GET", bucket, "", query=query)
        if status != 200:
            raise S3Error(status, body[:200].decode(errors="replace"))
        try:
            document = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            raise S3Error(status, f"not a ListObjectsV2 answer: {body[:80]!r}") from None
        count = document.findtext("{*}KeyCount")
        if count is not None:
            return int(count) > 0
        return document.find("{*}Contents") is not None

    def put(self, bucket: str, key: str, body: bytes, content_type: str = "application/json") -> None:
        status, answer = self._request("PUT", bucket, key, body, {"content-type": content_type})
        if status != 200:
            raise S3Error(status, answer[:200].decode(errors="replace"))

    def _request(
        self,
        method: str,
        bucket: str,
        key: str,
        body: bytes = b"",
        extra: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> tuple[int, bytes]:
        endpoint = urllib.parse.urlparse(self.endpoint)
        path = "/" + urllib.parse.quote(f"{bucket}/{key}" if key else bucket, safe="/-_.~")
        canonical_query = "&".join(
            f"{urllib.parse.quote(name, safe='-_.~')}={urllib.parse.quote(value, safe='-_.~')}"
            for name, value in sorted((query or {}).items())
        )
        headers = {
            "host": endpoint.netloc,
            "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
            "x-amz-date": dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"),
            **(extra or {}),
        }
        headers["authorization"] = self._authorization(method, path, headers, canonical_query)
        connection_class = http.client.HTTPSConnection if endpoint.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(endpoint.netloc, timeout=self.timeout)
        try:
            target = f"{path}?{canonical_query}" if canonical_query else path
            connection.request(method, target, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def _authorization(self, method: str, path: str, headers: dict[str, str], query: str = "") -> str:
        amz_date = headers["x-amz-date"]
        day = amz_date[:8]
        names = sorted(headers)
        canonical = "\n".join(
            [
                method,
                path,
                query,
                "".join(f"{name}:{headers[name].strip()}\n" for name in names),
                ";".join(names),
                headers["x-amz-content-sha256"],
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key = ("AWS4" + self.secret_key).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            key = hmac.new(key, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
        return (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )
