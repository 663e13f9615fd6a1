"""Mail address helpers shared by the SMTP side and delivery."""


def domain_of(address: str) -> str:
    """Return the lower-case domain of ``local@domain``, or '' when there is none."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def group_by_domain(recipients: list[str]) -> dict[str, list[str]]:
    """Group recipients by destination domain, keeping their order."""
    groups: dict[str, list[str]] = {}
    for recipient in recipients:
        groups.setdefault(domain_of(recipient), []).append(recipient)
    return groups
