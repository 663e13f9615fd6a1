"""Inbound SMTP: listeners, sessions on aiosmtpd, policy and header stamping."""
