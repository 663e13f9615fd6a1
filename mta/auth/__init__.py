"""Users of the submission service and their credentials."""
