"""Data protection operations on one person's data: export, erasure, legal holds and retention.

Erasure, holds and retention batches take one transaction-level advisory
lock (GDPR_LOCK_ID), so a hold set while an erasure or a purge runs takes
effect before the next one starts.
"""

# Any constant works: it only has to be the same on every node.
GDPR_LOCK_ID = 0x6D7467


def pseudonym_of(config, address: str) -> str:
    """Return the address's pseudonym under logging.pseudonym_key_file, creating the key on first use.

    It is the one log lines and the GDPR audit entries give the address.
    Raises OSError or ValueError when the key cannot be read or created.
    """
    from mta.pseudonym import address_pseudonym, load_or_create_key

    return address_pseudonym(load_or_create_key(config.data_path(config.logging.pseudonym_key_file)), address)
