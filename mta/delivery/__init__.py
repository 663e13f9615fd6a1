"""Outbound: routes and MX resolution, SMTP delivery, local mailboxes, bounces."""
