"""Data protection operations on one person's data: export, erasure, legal holds and retention.

Erasure, holds and retention batches take one transaction-level advisory
lock (GDPR_LOCK_ID), so a hold set while an erasure or a purge runs takes
effect before the next one starts.
"""

# Any constant works: it only has to be the same on every node.
GDPR_LOCK_ID = 0x6D7467
