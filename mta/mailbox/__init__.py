"""The mailbox store of local deliveries: metadata, attachments, reading and removal."""
