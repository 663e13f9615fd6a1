"""Message bodies at rest: encryption and the stores that keep the ciphertext."""
