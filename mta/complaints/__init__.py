"""Feedback loop reports (ARF, RFC 5965): complaints about our mail, turned into webhook events and suppressions.

``report`` parses a report without I/O, and ``handler`` matches it to the
original message and records the complaint.
"""
