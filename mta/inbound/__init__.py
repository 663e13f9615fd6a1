"""Authentication of mail arriving on MX: SPF, DKIM verification and DMARC."""
