"""The S3 regions inside the EU, and the endpoint hosts that serve them.

Mail bodies must stay in the EU, so an S3 body store is accepted only in a
region listed in ``EU_REGIONS`` and only through an endpoint host that
belongs to that region. The host of a configured ``endpoint_url`` is checked
because the region name alone moves nothing: botocore sends every request
to the endpoint, whatever region it signs for.

Sources, checked 2026:

- AWS: region codes and names from botocore's ``endpoints.json`` (botocore
  1.40). Excluded: eu-west-2 (London, United Kingdom) and eu-central-2
  (Zurich, Switzerland) are in Europe but not in the EU.
- Scaleway: regions fr-par, nl-ams and pl-waw with the endpoint
  ``s3.<region>.scw.cloud``, from Scaleway's Object Storage documentation.
- OVHcloud: the European regions of "Object Storage - Endpoints and Object
  Storage geoavailability" (updated 2026-02-03), with the endpoint
  ``s3.<region>.io.cloud.ovh.net`` and the legacy
  ``s3.<region>.perf.cloud.ovh.net``. Excluded: uk (London).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Region:
    provider: str
    location: str
    # Host patterns of the region's endpoints; "*" matches one DNS label
    # (the bucket name, in virtual-hosted style requests).
    hosts: tuple[str, ...]

    @property
    def default_endpoint(self) -> str:
        return f"https://{self.hosts[0]}"


def _aws(code: str, location: str) -> Region:
    hosts = (f"s3.{code}.amazonaws.com", f"s3.dualstack.{code}.amazonaws.com")
    return Region("AWS", location, hosts + tuple(f"*.{host}" for host in hosts))


def _scaleway(code: str, location: str) -> Region:
    host = f"s3.{code}.scw.cloud"
    return Region("Scaleway", location, (host, f"*.{host}"))


def _ovhcloud(code: str, location: str) -> Region:
    hosts = (f"s3.{code}.io.cloud.ovh.net", f"s3.{code}.perf.cloud.ovh.net")
    return Region("OVHcloud", location, hosts + tuple(f"*.{host}" for host in hosts))


EU_REGIONS: dict[str, Region] = {
    "eu-central-1": _aws("eu-central-1", "Frankfurt, Germany"),
    "eu-north-1": _aws("eu-north-1", "Stockholm, Sweden"),
    "eu-south-1": _aws("eu-south-1", "Milan, Italy"),
    "eu-south-2": _aws("eu-south-2", "Aragón, Spain"),
    "eu-west-1": _aws("eu-west-1", "Dublin, Ireland"),
    "eu-west-3": _aws("eu-west-3", "Paris, France"),
    "fr-par": _scaleway("fr-par", "Paris, France"),
    "nl-ams": _scaleway("nl-ams", "Amsterdam, Netherlands"),
    "pl-waw": _scaleway("pl-waw", "Warsaw, Poland"),
    "de": _ovhcloud("de", "Frankfurt, Germany"),
    "eu-south-mil": _ovhcloud("eu-south-mil", "Milan, Italy"),
    "eu-west-par": _ovhcloud("eu-west-par", "Paris, France"),
    "gra": _ovhcloud("gra", "Gravelines, France"),
    "rbx": _ovhcloud("rbx", "Roubaix, France"),
    "sbg": _ovhcloud("sbg", "Strasbourg, France"),
    "waw": _ovhcloud("waw", "Warsaw, Poland"),
}

# Regions often taken for EU ones, so that the error names the reason they are rejected.
OUTSIDE_EU: dict[str, str] = {
    "eu-west-2": "AWS London, United Kingdom",
    "eu-central-2": "AWS Zurich, Switzerland",
    "uk": "OVHcloud London, United Kingdom",
}


def check_region(region: str, own_service: bool = False) -> None:
    """Raise ValueError unless the region is in ``EU_REGIONS``.

    With own_service (an endpoint host listed in ``extra_endpoint_hosts``)
    any region name the service uses is accepted, since the listed host is
    what keeps the data in the EU, except a name known to be outside it.
    """
    if region in EU_REGIONS:
        return
    allowed = ", ".join(sorted(EU_REGIONS))
    if region in OUTSIDE_EU:
        raise ValueError(f"storage.region {region!r} is not allowed: it is {OUTSIDE_EU[region]}, "
                         f"outside the EU. Allowed regions: {allowed}")
    if own_service:
        return
    if region.lower() in EU_REGIONS:
        raise ValueError(f"storage.region {region!r} is not an allowed EU region: region names are lower case, "
                         f"such as {region.lower()!r}. Allowed regions: {allowed}")
    raise ValueError(f"storage.region {region!r} is not an allowed EU region. Allowed regions: {allowed}; for "
                     "your own EU service, list its endpoint host in storage.extra_endpoint_hosts")


def is_own_service(endpoint_url: str, extra_hosts: list[str]) -> bool:
    """Tell whether endpoint_url's host matches one of the operator's extra_endpoint_hosts patterns."""
    if not endpoint_url or not extra_hosts:
        return False
    host = _endpoint_host(endpoint_url)
    return any(host_matches(pattern, host) for pattern in extra_hosts)


def resolve_endpoint(region: str, endpoint_url: str, extra_hosts: list[str], allow_loopback: bool) -> str:
    """Return the endpoint URL to use for an allowed region, or raise ValueError.

    An empty ``endpoint_url`` means the region's standard endpoint. A loopback
    endpoint (127.0.0.0/8, ::1, localhost) needs ``allow_loopback``. Any other
    must use HTTPS and a host of the region or of ``extra_hosts``.
    """
    if not endpoint_url:
        if region not in EU_REGIONS:
            raise ValueError(f"storage.endpoint_url is required for region {region!r}, which has no built-in "
                             "endpoint")
        return EU_REGIONS[region].default_endpoint

    host = _endpoint_host(endpoint_url)
    if is_loopback(host):
        if not allow_loopback:
            raise ValueError(f"storage.endpoint_url {endpoint_url!r} is a loopback address, allowed only with "
                             "storage.allow_loopback_endpoint = true (for tests and development)")
        return endpoint_url

    if urlsplit(endpoint_url).scheme != "https":
        raise ValueError(f"storage.endpoint_url {endpoint_url!r} must use https")
    if any(host_matches(pattern, host) for pattern in extra_hosts):
        return endpoint_url

    owner = next((code for code, known in EU_REGIONS.items()
                  if any(host_matches(pattern, host) for pattern in known.hosts)), None)
    if owner is None:
        raise ValueError(f"storage.endpoint_url host {host!r} is not an allowed EU endpoint: use a host of "
                         f"region {region} ({', '.join(EU_REGIONS[region].hosts)}), or list your own EU "
                         "service in storage.extra_endpoint_hosts")
    if owner != region:
        raise ValueError(f"storage.endpoint_url host {host!r} serves region {owner}, not storage.region {region!r}")
    return endpoint_url


# Domains of the providers above. Their EU hosts are built in, so an extra
# pattern under them could only add a host outside the EU.
_PROVIDER_DOMAINS = ("amazonaws.com", "scw.cloud", "ovh.net")


def check_host_pattern(pattern: str) -> None:
    """Raise ValueError for a pattern wider than one wildcard label, or under a built-in provider's domain."""
    labels = pattern.lower().split(".")
    fixed = labels[1:] if labels[0] == "*" else labels
    if len(fixed) < 2 or any(not label or "*" in label for label in fixed):
        raise ValueError(f"storage.extra_endpoint_hosts entry {pattern!r} is invalid: expected a host name such "
                         "as s3.example.eu, or *.s3.example.eu for its bucket subdomains")
    domain = ".".join(fixed)
    for provider in _PROVIDER_DOMAINS:
        if domain == provider or domain.endswith("." + provider):
            raise ValueError(f"storage.extra_endpoint_hosts entry {pattern!r} is under {provider}, whose EU "
                             "endpoints are built in: set storage.region instead")


def host_matches(pattern: str, host: str) -> bool:
    """Match a host name label by label, where a "*" label matches exactly one label."""
    pattern_labels = pattern.lower().split(".")
    host_labels = host.lower().rstrip(".").split(".")
    if len(pattern_labels) != len(host_labels):
        return False
    return all(expected in ("*", label) for expected, label in zip(pattern_labels, host_labels))


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint_host(endpoint_url: str) -> str:
    parts = urlsplit(endpoint_url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    valid = (parts.scheme in ("http", "https") and parts.hostname and not parts.username
             and parts.path in ("", "/") and not parts.query and not parts.fragment and port != -1)
    if not valid:
        raise ValueError(f"storage.endpoint_url must look like https://host[:port], got {endpoint_url!r}")
    return parts.hostname.lower()
